//! Movements and their reversal.

use super::*;

impl World {
    /// The movement record the index holds at `version`, as the service reads it.
    fn movement(&self, version: u64) -> Option<Movement> {
        let row = self.index.get(&keys::movement(TOKEN, version))?;
        Some(Movement::from_row(row).expect("a movement record"))
    }

    /// The reversal of the movement at `version`, its record read from the index as the
    /// service gives it to the writer.
    fn reversal(&self, version: u64) -> Operation {
        Operation::Reverse {
            version,
            reason: " booked to the wrong investor ".into(),
            original: self.movement(version),
        }
    }

    /// The version the last event made.
    fn version(&self) -> u64 {
        self.token().version
    }

    /// `(supply, balances)`: what a reversal must restore.
    fn positions(&self) -> (u128, Vec<(String, u128)>) {
        let mut balances: Vec<(String, u128)> = self
            .token()
            .holdings
            .iter()
            .map(|(id, h)| (id.to_string(), h.balance.0))
            .filter(|(_, b)| *b > 0)
            .collect();
        balances.sort();
        (self.token().total_supply.0, balances)
    }
}

#[test]
fn a_movement_row_reads_back_as_written() {
    let full = Movement {
        class: Some("A".into()),
        to_class: Some("B-2".into()),
        version: 42,
        kind: MovementKind::Reversed,
        from: Some("bob".into()),
        to: None,
        amount: Amount(u128::MAX - 7),
        at: T0 + Duration::nanoseconds(123_456_789),
        actor: "compliance é".into(),
        forced: true,
        reason: Some("wrong investor".into()),
        hold_id: Some("h1".into()),
        reverses: Some(41),
        reversed_by: None,
    };
    assert_eq!(Movement::from_row(&full.to_row()), Some(full.clone()));
    let bare = Movement {
        from: None,
        reason: None,
        hold_id: None,
        reverses: None,
        forced: false,
        class: None,
        to_class: None,
        ..full.clone()
    };
    assert_eq!(Movement::from_row(&bare.to_row()), Some(bare));
    let row = full.to_row();
    assert_eq!(
        Movement::from_row(&row[..row.len() - 1]),
        None,
        "a cut row is not one"
    );
    assert_eq!(Movement::from_row(b""), None);
}

#[test]
fn every_movement_is_recorded_in_the_index_by_the_version_its_event_made() {
    let mut w = World::new(10_000, Rules::default());
    w.ok(issue("alice", 1_000));
    let issued = w.version();
    w.ok(transfer("alice", "bob", 100));
    let transferred = w.version();
    w.ok(freeze("carol"));
    let frozen = w.version();
    w.ok(forced("bob", "dave", 10));
    let forced_at = w.version();
    w.ok(redeem("alice", 50));
    let redeemed = w.version();

    let m = w.movement(issued).expect("the issuance's row");
    assert_eq!(
        (m.kind, m.from, m.to, m.amount.0),
        (MovementKind::Issued, None, Some("alice".into()), 1_000)
    );
    let m = w.movement(transferred).expect("the transfer's row");
    assert_eq!(
        (m.kind, m.from.as_deref(), m.to.as_deref(), m.forced),
        (MovementKind::Transferred, Some("alice"), Some("bob"), false)
    );
    assert!(w.movement(frozen).is_none(), "a freeze moves nothing");
    let m = w.movement(forced_at).expect("the forced transfer's row");
    assert!(m.forced && m.reason.is_some());
    let m = w.movement(redeemed).expect("the redemption's row");
    assert_eq!(
        (m.kind, m.to, m.amount.0),
        (MovementKind::Redeemed, None, 50)
    );
    assert_eq!((m.version, m.actor.as_str()), (redeemed, "agent_1"));
}

#[test]
fn a_reversed_transfer_moves_the_same_amount_back_and_names_the_original() {
    let mut w = World::new(10_000, Rules::default());
    w.ok(issue("alice", 1_000));
    let before = w.positions();
    w.ok(transfer("alice", "bob", 300));
    let original = w.version();

    let events = w.ok(w.reversal(original));
    let reversal = w.version();
    assert_eq!(
        w.positions(),
        before,
        "balances as they were before the transfer"
    );
    match &events[..] {
        [
            Event {
                change:
                    Change::Reversed {
                        original: o,
                        from,
                        to,
                        amount,
                        reason,
                        ..
                    },
                ..
            },
        ] => {
            assert_eq!(o.version, original);
            assert_eq!(
                (from.as_deref(), to.as_deref()),
                (Some("bob"), Some("alice"))
            );
            assert_eq!(
                (amount.0, reason.as_str()),
                (300, "booked to the wrong investor")
            );
        }
        other => panic!("one reversal event, got {other:?}"),
    }
    // The reversal is a movement of its own, and the original is marked reversed by it.
    let m = w.movement(reversal).expect("the reversal's row");
    assert_eq!(
        (m.kind, m.reverses),
        (MovementKind::Reversed, Some(original))
    );
    let row = w
        .index
        .get(&keys::reversal(TOKEN, original))
        .expect("the original's reversal row");
    assert_eq!(keys::seq_of(row), Some(reversal));
    assert_eq!(w.token().reversed.get(&original), Some(&reversal));
    // The balance history has both movements.
    let deltas: Vec<_> = events[0]
        .change
        .balance_deltas()
        .map(|(id, d)| (id.to_string(), d))
        .collect();
    assert_eq!(deltas, [("bob".into(), -300), ("alice".into(), 300)]);
}

#[test]
fn a_movement_is_reversed_once_and_a_reversal_is_not_reversed() {
    let mut w = World::new(10_000, Rules::default());
    w.ok(issue("alice", 1_000));
    w.ok(transfer("alice", "bob", 300));
    let original = w.version();
    let reverse = w.reversal(original);
    w.ok(reverse.clone());
    let reversal = w.version();
    let e = w.refuse(reverse);
    assert_eq!((e.kind, e.code), (ErrorKind::Conflict, "already_reversed"));
    assert!(e.message.contains(&reversal.to_string()), "{}", e.message);
    let e = w.refuse(w.reversal(reversal));
    assert_eq!(
        (e.kind, e.code),
        (ErrorKind::Conflict, "reversal_not_reversible")
    );
}

#[test]
fn what_is_not_a_movement_cannot_be_reversed_and_bad_input_is_named() {
    let mut w = World::new(10_000, Rules::default());
    w.ok(issue("alice", 1_000));
    w.ok(freeze("carol"));
    let frozen = w.version();
    for version in [frozen, 0, w.version() + 1, 999] {
        let e = w.refuse(w.reversal(version));
        assert_eq!(
            (e.kind, e.code, e.field.as_deref()),
            (ErrorKind::NotFound, "movement_not_found", Some("version"))
        );
    }
    // A record that is not the one asked for (the service read the wrong row) is not used.
    let e = w.refuse(Operation::Reverse {
        version: 3,
        reason: "wrong".into(),
        original: w.movement(2),
    });
    assert_eq!(e.code, "movement_not_found");
    for reason in ["", "   ", &"x".repeat(1_001)] {
        let e = w.refuse(Operation::Reverse {
            version: 2,
            reason: reason.into(),
            original: w.movement(2),
        });
        assert_eq!(
            (e.kind, e.field.as_deref()),
            (ErrorKind::Invalid, Some("reason"))
        );
    }
}

#[test]
fn reversing_an_issuance_takes_it_out_of_the_supply_and_a_redemption_issues_it_again() {
    let mut w = World::new(10_000, Rules::default());
    w.ok(issue("alice", 1_000));
    let before = w.positions();
    w.ok(issue("bob", 400));
    let issued = w.version();
    w.ok(w.reversal(issued));
    assert_eq!(
        w.positions(),
        before,
        "bob's 400 are no longer in the supply"
    );

    w.ok(redeem("alice", 250));
    let redeemed = w.version();
    w.ok(w.reversal(redeemed));
    assert_eq!(w.positions(), before, "alice's 250 are back");
    assert_eq!(w.token().holders, 1);
}

#[test]
fn a_reversal_is_refused_when_it_would_break_a_rule_today_and_changes_nothing() {
    let mut w = World::new(10_000, Rules::default());
    w.ok(issue("alice", 1_000));
    w.ok(transfer("alice", "bob", 300));
    let original = w.version();
    // Bob spent part of it: he no longer has 300.
    w.ok(transfer("bob", "carol", 200));
    w.refused(w.reversal(original), "insufficient_balance");
    w.ok(transfer("carol", "bob", 200));
    // Frozen on either side.
    w.ok(freeze("bob"));
    w.refused(w.reversal(original), "sender_frozen");
    w.ok(unfreeze("bob"));
    w.ok(freeze("alice"));
    w.refused(w.reversal(original), "receiver_frozen");
    w.ok(unfreeze("alice"));
    // Part of it frozen or on hold.
    w.ok(freeze_amount("bob", 1));
    w.refused(w.reversal(original), "insufficient_unfrozen_balance");
    w.ok(unfreeze_amount("bob", 1));
    w.ok(Operation::PlaceHold {
        class: None,
        hold_id: "h1".into(),
        from: "bob".into(),
        to: "dave".into(),
        amount: Amount(1),
        expires_at: w.now + Duration::seconds(60),
        payment: None,
    });
    w.refused(w.reversal(original), "insufficient_unheld_balance");
    w.ok(Operation::VoidHold {
        hold_id: "h1".into(),
        reason: "not needed".into(),
    });
    // Paused.
    w.ok(Operation::Pause);
    w.refused(w.reversal(original), "token_paused");
    w.ok(Operation::Unpause);
    // The one who gets the tokens back must still be eligible, within the limits.
    w.update_investor("alice", |p| p.kyc_status = KycStatus::Expired);
    w.refused(w.reversal(original), "kyc_expired");
    w.update_investor("alice", |p| p.kyc_status = KycStatus::Verified);
    w.update_rules(|r| r.max_balance = Some(Amount(750)));
    w.refused(w.reversal(original), "max_balance_exceeded");
    w.update_rules(|r| r.max_balance = None);
    // And now it passes; a lock-up or a transfer limit does not stop an agent's correction.
    w.update_rules(|r| r.daily_transfer_limit = Some(Amount(1)));
    w.ok(w.reversal(original));
    assert_eq!((w.balance("alice"), w.balance("bob")), (1_000, 0));
}

#[test]
fn a_reversed_redemption_respects_the_supply_cap() {
    let mut w = World::new(1_000, Rules::default());
    w.ok(issue("alice", 1_000));
    w.ok(redeem("alice", 100));
    let redeemed = w.version();
    w.ok(issue("bob", 100));
    w.refused(w.reversal(redeemed), "supply_cap_exceeded");
}

#[test]
fn a_posted_hold_is_reversed_by_its_posted_amount() {
    let mut w = World::new(10_000, Rules::default());
    w.ok(issue("alice", 1_000));
    w.ok(Operation::PlaceHold {
        class: None,
        hold_id: "h1".into(),
        from: "alice".into(),
        to: "bob".into(),
        amount: Amount(300),
        expires_at: w.now + Duration::seconds(60),
        payment: None,
    });
    w.ok(Operation::PostHold {
        hold_id: "h1".into(),
        amount: Some(Amount(120)),
    });
    let posted = w.version();
    let m = w.movement(posted).expect("the posting's row");
    assert_eq!(
        (m.kind, m.amount.0, m.hold_id.as_deref()),
        (MovementKind::HoldPosted, 120, Some("h1"))
    );
    w.ok(w.reversal(posted));
    assert_eq!((w.balance("alice"), w.balance("bob")), (1_000, 0));
}

#[test]
fn reversals_in_a_batch_and_after_a_replay() {
    let mut w = World::new(10_000, Rules::default());
    w.ok(issue("alice", 1_000));
    w.ok(transfer("alice", "bob", 10));
    w.ok(transfer("alice", "carol", 20));
    let (first, second) = (w.version() - 1, w.version());
    // All or nothing: the second reversal of the same movement in one batch is refused.
    let e = w.refuse_command(Command::Batch {
        token_id: TOKEN.into(),
        operations: vec![w.reversal(first), w.reversal(first)],
        mode: BatchMode::AllOrNothing,
    });
    assert_eq!(
        (e.code, e.field.as_deref()),
        ("already_reversed", Some("operations[1].version"))
    );
    w.run(Command::Batch {
        token_id: TOKEN.into(),
        operations: vec![w.reversal(first), w.reversal(second)],
        mode: BatchMode::AllOrNothing,
    })
    .expect("both reversed");
    assert_eq!(w.balance("alice"), 1_000);
    // Replaying the log rebuilds the same book, reversals included.
    let mut replayed = Book::default();
    for event in &w.log {
        replayed.apply(event);
    }
    assert_eq!(replayed.token(TOKEN), w.book.token(TOKEN));
}
