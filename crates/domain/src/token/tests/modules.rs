//! ERC-3643 compliance modules: holders per country, minimum transfer per country, conditional
//! transfers and agent restrictions.

use super::*;

impl World {
    /// Runs `command` as `actor` instead of the usual agent.
    fn run_as(&mut self, actor: &str, command: Command) -> Result<Vec<Event>> {
        let ctx = Context {
            now: self.now,
            actor: actor.into(),
        };
        let events = self.book.decide(&command, &ctx)?;
        for event in &events {
            self.book.apply(event);
        }
        self.index.extend(self.book.take_index());
        self.log.extend(events.iter().cloned());
        Ok(events)
    }

    fn op_as(&mut self, actor: &str, operation: Operation) -> Result<Vec<Event>> {
        self.run_as(
            actor,
            Command::Operate {
                token_id: TOKEN.into(),
                operation,
            },
        )
    }
}

#[test]
fn holders_per_country_are_capped_and_a_holder_leaving_frees_a_place() {
    let rules = Rules {
        max_holders_by_country: [(country("DE"), 2)].into(),
        ..Rules::default()
    };
    let mut w = World::new(10_000, rules);
    w.ok(issue("alice", 100));
    w.ok(issue("bob", 100));
    // Dave would be the third holder from DE; carol is from FR.
    let e = w.refused(issue("dave", 10), "country_holders_reached");
    assert_eq!(e.field.as_deref(), Some("to"));
    w.refused(transfer("alice", "dave", 10), "country_holders_reached");
    w.ok(transfer("alice", "carol", 10));
    // Alice sending all she has leaves her place to dave.
    w.ok(transfer("alice", "dave", 90));
    assert_eq!(w.token().holders, 3);
    // An existing holder receives more without counting again.
    w.ok(issue("dave", 5));
    // The count follows investors' countries as they are now.
    w.update_investor("carol", |p| p.country = country("DE"));
    w.refused(issue("alice", 1), "country_holders_reached");
    w.update_investor("bob", |p| p.country = country("FR"));
    w.refused(issue("alice", 1), "country_holders_reached");
    w.update_investor("carol", |p| p.country = country("FR"));
    w.ok(issue("alice", 1));
}

#[test]
fn a_new_holder_from_a_country_with_a_minimum_receives_at_least_it() {
    let rules = Rules {
        min_transfer_by_country: [(country("FR"), Amount(50))].into(),
        ..Rules::default()
    };
    let mut w = World::new(10_000, rules);
    let e = w.refused(issue("carol", 49), "below_country_minimum");
    assert_eq!(e.field.as_deref(), Some("amount"));
    w.ok(issue("carol", 50));
    // Once a holder, any amount; investors from elsewhere are not concerned.
    w.ok(issue("carol", 1));
    w.ok(issue("alice", 1));
    w.ok(issue("alice", 100));
    w.update_investor("bob", |p| p.country = country("FR"));
    w.refused(transfer("alice", "bob", 49), "below_country_minimum");
    w.ok(transfer("alice", "bob", 50));
    // Who sold everything is new again.
    w.ok(transfer("carol", "dave", 51));
    w.refused(transfer("bob", "carol", 10), "below_country_minimum");
}

fn revoke(id: &str) -> Operation {
    Operation::RevokeTransferApproval {
        approval_id: id.into(),
    }
}

#[test]
fn where_approval_is_required_an_approved_transfer_passes_once() {
    let rules = Rules {
        transfer_approval_required: true,
        ..Rules::default()
    };
    let mut w = World::new(10_000, rules);
    // Issuance and an agent's forced transfer need no approval.
    w.ok(issue("alice", 300));
    w.ok(forced("alice", "carol", 10));
    let e = w.refused(transfer("alice", "bob", 30), "transfer_not_approved");
    assert_eq!(e.field, None);
    let events = w.ok(approve("alice", "bob", 30));
    assert_eq!(events[0].change.name(), "transfer_approved");
    // Exactly that transfer: not another amount, not another receiver.
    w.refused(transfer("alice", "bob", 29), "transfer_not_approved");
    w.refused(transfer("alice", "dave", 30), "transfer_not_approved");
    let events = w.ok(transfer("alice", "bob", 30));
    match &events[0].change {
        Change::Transferred { approval_id, .. } => {
            assert_eq!(approval_id.as_deref(), Some("apr-alice-bob-30"))
        }
        other => panic!("a transfer, got {other:?}"),
    }
    assert!(w.token().approvals.is_empty(), "used up");
    w.refused(transfer("alice", "bob", 30), "transfer_not_approved");

    // A hold uses one when placed; its posting needs none.
    w.ok(approve("alice", "dave", 20));
    w.ok(Operation::PlaceHold {
        class: None,
        hold_id: "h1".into(),
        from: "alice".into(),
        to: "dave".into(),
        amount: Amount(20),
        expires_at: w.now + Duration::seconds(60),
        payment: None,
    });
    assert!(w.token().approvals.is_empty());
    w.ok(Operation::PostHold {
        hold_id: "h1".into(),
        amount: None,
    });
    assert_eq!(w.balance("dave"), 20);

    // An approval not used can be revoked, once.
    w.ok(approve("alice", "bob", 5));
    w.ok(revoke("apr-alice-bob-5"));
    let e = w.refuse(revoke("apr-alice-bob-5"));
    assert_eq!(
        (e.kind, e.code, e.field.as_deref()),
        (
            ErrorKind::NotFound,
            "approval_not_found",
            Some("approval_id")
        )
    );
    w.refused(transfer("alice", "bob", 5), "transfer_not_approved");
    // Bad approvals change nothing.
    for (op, field) in [
        (approve("alice", "bob", 0), "amount"),
        (approve("alice", "alice", 5), "to"),
    ] {
        let e = w.refuse(op);
        assert_eq!(
            (e.kind, e.field.as_deref()),
            (ErrorKind::Invalid, Some(field))
        );
    }
    let e = w.refuse(approve("alice", "nobody", 5));
    assert_eq!(
        (e.code, e.field.as_deref()),
        ("investor_not_found", Some("to"))
    );
    // Approvals waiting survive a replay.
    w.ok(approve("alice", "bob", 7));
    let mut replayed = Book::default();
    for event in &w.log {
        replayed.apply(event);
    }
    assert_eq!(replayed.token(TOKEN), w.book.token(TOKEN));
    // With the rule off, transfers need none and approvals wait unused.
    w.update_rules(|r| r.transfer_approval_required = false);
    w.ok(transfer("alice", "bob", 7));
    assert_eq!(w.token().approvals.len(), 1);
}

#[test]
fn a_restricted_agent_may_do_only_the_operations_listed_on_that_token() {
    let rules = Rules {
        agent_restrictions: [("agent_2".to_owned(), ["issue".to_owned()].into())].into(),
        ..Rules::default()
    };
    let mut w = World::new(10_000, rules);
    w.op_as("agent_2", issue("alice", 100))
        .expect("agent 2 may issue");
    let before = w.snapshot();
    for operation in [redeem("alice", 1), Operation::Pause, freeze("alice")] {
        let e = w.op_as("agent_2", operation).expect_err("restricted");
        assert_eq!((e.kind, e.code), (ErrorKind::Forbidden, "agent_restricted"));
        assert!(e.message.contains("issue"), "{}", e.message);
    }
    // Not even in a batch, nor by lifting the restriction themselves.
    let e = w
        .run_as(
            "agent_2",
            Command::Batch {
                token_id: TOKEN.into(),
                operations: vec![issue("bob", 1), redeem("alice", 1)],
                mode: BatchMode::AllOrNothing,
            },
        )
        .expect_err("the redemption is not theirs");
    assert_eq!(
        (e.code, e.field.as_deref()),
        ("agent_restricted", Some("operations[1]"))
    );
    let e = w
        .run_as(
            "agent_2",
            Command::UpdateRules {
                token_id: TOKEN.into(),
                expected_version: w.token().version,
                rules: Rules::default(),
            },
        )
        .expect_err("not theirs to lift");
    assert_eq!(e.code, "agent_restricted");
    assert_eq!(w.snapshot(), before, "a refused command changes nothing");
    // An independent batch refuses only what is not theirs.
    let (events, outcomes) = w
        .book
        .decide_batch(
            &TOKEN.into(),
            &[issue("bob", 1), redeem("alice", 1)],
            BatchMode::Independent,
            &Context {
                now: w.now,
                actor: "agent_2".into(),
            },
        )
        .expect("decided");
    assert_eq!(events.len(), 1);
    assert_eq!(
        outcomes[1].as_ref().map(|e| e.code),
        Some("agent_restricted")
    );
    // Other agents are not restricted.
    w.ok(redeem("alice", 1));
}

#[test]
fn malformed_module_rules_are_named() {
    let mut w = World::new(10_000, Rules::default());
    let version = w.token().version;
    let mut update = |rules: Rules| {
        w.refuse_command(Command::UpdateRules {
            token_id: TOKEN.into(),
            expected_version: version,
            rules,
        })
    };
    let e = update(Rules {
        max_holders_by_country: [(country("DE"), 0)].into(),
        ..Rules::default()
    });
    assert_eq!(e.field.as_deref(), Some("rules.max_holders_by_country.DE"));
    let e = update(Rules {
        min_transfer_by_country: [(country("FR"), Amount(0))].into(),
        ..Rules::default()
    });
    assert_eq!(e.field.as_deref(), Some("rules.min_transfer_by_country.FR"));
    let e = update(Rules {
        agent_restrictions: [("agent_2".to_owned(), ["mint".to_owned()].into())].into(),
        ..Rules::default()
    });
    assert_eq!(e.field.as_deref(), Some("rules.agent_restrictions.agent_2"));
    assert!(
        e.message.contains("mint is not an operation"),
        "{}",
        e.message
    );
    let e = update(Rules {
        agent_restrictions: [(" ".to_owned(), BTreeSet::new())].into(),
        ..Rules::default()
    });
    assert_eq!(e.field.as_deref(), Some("rules.agent_restrictions"));
}
