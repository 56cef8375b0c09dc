//! Holds and settlements against payment.

use super::*;

fn place(id: &str, from: &str, to: &str, amount: u128, seconds: i64) -> Operation {
    Operation::PlaceHold {
        class: None,
        hold_id: id.into(),
        from: from.into(),
        to: to.into(),
        amount: Amount(amount),
        expires_at: T0 + Duration::seconds(seconds),
        payment: None,
    }
}

fn settlement(id: &str, from: &str, to: &str, amount: u128, cash: u128) -> Operation {
    Operation::PlaceHold {
        class: None,
        hold_id: id.into(),
        from: from.into(),
        to: to.into(),
        amount: Amount(amount),
        expires_at: T0 + Duration::seconds(3_600),
        payment: Some(CashLeg {
            currency: eur(),
            amount: Amount(cash),
            reference: " wire 2025-0042 ".into(),
        }),
    }
}

fn post(id: &str, amount: Option<u128>) -> Operation {
    Operation::PostHold {
        hold_id: id.into(),
        amount: amount.map(Amount),
    }
}

fn void(id: &str) -> Operation {
    Operation::VoidHold {
        hold_id: id.into(),
        reason: "buyer withdrew".into(),
    }
}

impl World {
    /// Runs every expiry the book owes now, as the service's clock would.
    fn expire_due(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        for command in self.book.expired_holds(self.now) {
            events.extend(self.run(command).expect("expired"));
        }
        events
    }

    /// The record of a closed hold, read from the index as the service reads it.
    fn closed(&self, hold: &str) -> HoldRecord {
        let row = self
            .index
            .get(&keys::closed_hold(TOKEN, hold))
            .expect("a closed hold's row");
        serde_json::from_slice(row).expect("a hold record")
    }
}

fn funded() -> World {
    let mut w = World::new(10_000, Rules::default());
    w.ok(issue("alice", 1_000));
    w
}

#[test]
fn a_hold_reserves_the_amount_until_it_is_posted_in_part_and_the_rest_goes_back() {
    let mut w = funded();
    w.ok(place("h1", "alice", "bob", 300, 600));
    let alice = w.holding("alice");
    assert_eq!((alice.balance.0, alice.held.0), (1_000, 300));
    assert_eq!(alice.available().0, 700);
    assert_eq!(alice.transferable(w.now).0, 700);
    // What is held cannot move otherwise, by any route.
    w.refused(
        transfer("alice", "carol", 701),
        "insufficient_unheld_balance",
    );
    w.refused(redeem("alice", 701), "insufficient_unheld_balance");
    w.refused(forced("alice", "carol", 701), "insufficient_unheld_balance");
    w.refused(freeze_amount("alice", 701), "insufficient_unheld_balance");
    w.ok(transfer("alice", "carol", 700));

    let events = w.ok(post("h1", Some(200)));
    assert!(matches!(
        &events[0].change,
        Change::HoldPosted { amount, released, .. } if amount.0 == 200 && released.0 == 100
    ));
    assert_eq!((w.balance("alice"), w.balance("bob")), (100, 200));
    assert_eq!(w.holding("alice").held.0, 0);
    assert!(w.token().holds.is_empty());
    let record = w.closed("h1");
    assert_eq!(record.status, HoldStatus::Posted);
    assert_eq!((record.posted.0, record.released.0), (200, 100));
    assert_eq!(record.closed_at, Some(w.now));
    // Once: a closed hold is not pending any more.
    let again = w.refuse(post("h1", None));
    assert_eq!(again.code, "hold_not_pending");
    // The history of balances has the posting.
    assert_eq!(
        w.balances_as_of(TOKEN, w.now),
        vec![
            ("alice".into(), Amount(100)),
            ("bob".into(), Amount(200)),
            ("carol".into(), Amount(700))
        ]
    );
}

#[test]
fn placing_a_hold_checks_the_transfer_but_not_the_receivers_room() {
    let mut w = World::new(
        10_000,
        Rules {
            max_balance: Some(Amount(500)),
            ..Rules::default()
        },
    );
    w.ok(issue("alice", 500));
    w.ok(issue("bob", 500));
    w.update_investor("carol", |p| p.kyc_status = KycStatus::Pending);
    w.refused(place("h0", "alice", "carol", 10, 60), "kyc_not_verified");
    w.refused(place("h0", "alice", "bob", 501, 60), "insufficient_balance");
    // Bob is at his maximum: the hold is placed, its posting is refused.
    w.ok(place("h1", "alice", "bob", 100, 60));
    w.refused(post("h1", None), "max_balance_exceeded");
    w.ok(redeem("bob", 100));
    w.ok(post("h1", None));
    assert_eq!(w.balance("bob"), 500);
}

#[test]
fn a_posting_is_checked_again_as_things_are_then() {
    let mut w = funded();
    w.ok(place("h1", "alice", "bob", 100, 600));
    w.ok(freeze("bob"));
    w.refused(post("h1", None), "receiver_frozen");
    w.ok(unfreeze("bob"));
    w.ok(Operation::Pause);
    w.refused(post("h1", None), "token_paused");
    // Voiding moves nothing between holders: allowed while paused.
    w.ok(void("h1"));
    assert_eq!(w.holding("alice").held.0, 0);
    assert_eq!(w.closed("h1").status, HoldStatus::Voided);
    assert_eq!(w.closed("h1").reason.as_deref(), Some("buyer withdrew"));
}

#[test]
fn malformed_holds_are_invalid_and_change_nothing() {
    let mut w = funded();
    for (operation, field) in [
        (place("", "alice", "bob", 10, 60), "hold_id"),
        (place("h|1", "alice", "bob", 10, 60), "hold_id"),
        (place("h1", "alice", "bob", 10, 0), "expires_at"),
        (
            place("h1", "alice", "bob", 10, MAX_HOLD_SECONDS + 1),
            "expires_at",
        ),
        (place("h1", "alice", "bob", 0, 60), "amount"),
        (place("h1", "alice", "alice", 10, 60), "to"),
        (settlement("h1", "alice", "bob", 10, 0), "payment.amount"),
    ] {
        let err = w.refuse(operation);
        assert_eq!(
            (err.kind, err.field.as_deref()),
            (ErrorKind::Invalid, Some(field)),
            "{}",
            err.message
        );
    }
    w.ok(place("h1", "alice", "bob", 10, 60));
    assert_eq!(
        w.refuse(place("h1", "alice", "bob", 10, 60)).code,
        "hold_exists"
    );
    for amount in [0, 11] {
        let err = w.refuse(post("h1", Some(amount)));
        assert_eq!(err.field.as_deref(), Some("amount"), "{}", err.message);
    }
    assert_eq!(w.refuse(post("nope", None)).code, "hold_not_pending");
}

#[test]
fn holds_expire_at_their_deadline_and_an_expired_hold_cannot_be_posted() {
    let mut w = funded();
    w.ok(place("h1", "alice", "bob", 100, 60));
    w.ok(place("h2", "alice", "bob", 100, 120));
    w.advance(59);
    assert!(
        w.expire_due().is_empty(),
        "nothing is due before its deadline"
    );
    w.advance(1);
    // Due, but not expired yet by the service: it cannot be posted either.
    assert_eq!(w.refuse(post("h1", None)).code, "hold_expired");
    let events = w.expire_due();
    assert_eq!(events.len(), 1);
    assert!(
        matches!(&events[0].change, Change::HoldExpired { hold_id, .. } if hold_id.as_str() == "h1")
    );
    assert_eq!(w.closed("h1").status, HoldStatus::Expired);
    assert_eq!(w.holding("alice").held.0, 100);
    // Expiring again is refused, as the service's retries need.
    let again = Command::ExpireHolds {
        token_id: TOKEN.into(),
        hold_ids: vec!["h1".into()],
    };
    assert_eq!(w.refuse_command(again).code, "nothing_to_expire");
    w.ok(post("h2", None));
    w.advance(3_600);
    assert!(w.expire_due().is_empty(), "a posted hold does not expire");
    assert_eq!(w.balance("bob"), 100);
}

#[test]
fn a_settlement_moves_the_tokens_only_with_the_payment_confirmation() {
    let mut w = funded();
    w.ok(settlement("s1", "alice", "bob", 250, 2_500_000));
    assert_eq!(w.refuse(post("s1", None)).code, "payment_not_confirmed");
    assert_eq!(
        w.refuse(Operation::ConfirmPayment {
            hold_id: "s1".into(),
            confirmation: " ".into(),
        })
        .field
        .as_deref(),
        Some("confirmation")
    );
    let events = w.ok(Operation::ConfirmPayment {
        hold_id: "s1".into(),
        confirmation: "camt.054 entry 7781".into(),
    });
    let Change::HoldPosted {
        amount, payment, ..
    } = &events[0].change
    else {
        panic!("posted: {events:?}");
    };
    assert_eq!(amount.0, 250);
    let paid = payment.as_ref().expect("the cash leg");
    assert_eq!(paid.leg.reference, "wire 2025-0042", "trimmed");
    assert_eq!(paid.leg.amount.0, 2_500_000);
    assert_eq!(w.balance("bob"), 250);
    assert_eq!(
        w.closed("s1").payment_confirmation.as_deref(),
        Some("camt.054 entry 7781")
    );

    // A rejected payment voids the settlement; a hold without a cash leg has none to confirm.
    w.ok(settlement("s2", "alice", "bob", 100, 1_000_000));
    w.ok(Operation::RejectPayment {
        hold_id: "s2".into(),
        reason: "funds returned".into(),
    });
    assert_eq!(w.closed("s2").status, HoldStatus::Voided);
    assert_eq!(w.holding("alice").held.0, 0);
    w.ok(place("h3", "alice", "bob", 1, 60));
    let err = w.refuse(Operation::ConfirmPayment {
        hold_id: "h3".into(),
        confirmation: "x".into(),
    });
    assert_eq!(err.code, "no_payment_leg");
}

#[test]
fn holds_post_or_void_in_bulk_each_on_its_own() {
    let mut w = funded();
    for i in 0..4 {
        w.ok(place(&format!("h{i}"), "alice", "bob", 10, 600));
    }
    let (events, outcomes) = w
        .book
        .decide_batch(
            &TOKEN.into(),
            &[
                post("h0", None),
                void("h1"),
                post("h0", None),
                post("h3", Some(5)),
            ],
            BatchMode::Independent,
            &w.ctx(),
        )
        .expect("decided");
    assert_eq!(events.len(), 3);
    assert_eq!(
        outcomes[2].as_ref().map(|e| e.code),
        Some("hold_not_pending"),
        "the same hold posted twice in one batch"
    );
}

#[test]
fn the_ledger_shows_what_is_in_flight_and_a_holding_is_its_two_accounts() {
    let mut w = funded();
    let events = [
        w.ok(place("h1", "alice", "bob", 300, 600)),
        w.ok(post("h1", Some(200))),
        w.ok(settlement("s1", "alice", "bob", 50, 500)),
    ]
    .concat();
    let postings: Vec<(String, String, String, u128)> = events
        .iter()
        .flat_map(crate::ledger::postings_for)
        .map(|p| (p.from, p.to, p.unit, p.amount.0))
        .collect();
    let p = |from: &str, to: &str, unit: &str, amount| {
        (from.to_owned(), to.to_owned(), unit.to_owned(), amount)
    };
    assert_eq!(
        postings,
        vec![
            p("investor:alice", "held:alice", TOKEN, 300),
            p("held:alice", "investor:bob", TOKEN, 200),
            p("held:alice", "investor:alice", TOKEN, 100),
            p("investor:alice", "held:alice", TOKEN, 50),
        ]
    );
    let confirmed = w.ok(Operation::ConfirmPayment {
        hold_id: "s1".into(),
        confirmation: "ok".into(),
    });
    let postings: Vec<_> = crate::ledger::postings_for(&confirmed[0])
        .into_iter()
        .map(|p| (p.from, p.to, p.unit, p.amount.0))
        .collect();
    assert_eq!(
        postings,
        vec![
            p("held:alice", "investor:bob", TOKEN, 50),
            p("investor:bob", "investor:alice", "EUR", 500),
        ]
    );
}

#[test]
fn pending_holds_and_their_deadlines_survive_a_replay_and_a_snapshot() {
    let mut w = funded();
    w.ok(place("h1", "alice", "bob", 100, 60));
    w.ok(place("h2", "alice", "carol", 100, 30));
    w.ok(void("h2"));
    let mut replayed = Book::default();
    for event in &w.log {
        replayed.apply(event);
    }
    // As the engine stores a snapshot: MessagePack with field names.
    let stored: Book = rmp_serde::from_slice(&rmp_serde::to_vec_named(&replayed).expect("encoded"))
        .expect("decoded");
    for book in [&replayed, &stored] {
        assert_eq!(book.token(TOKEN), w.book.token(TOKEN));
        let due = book.expired_holds(T0 + Duration::seconds(60));
        assert!(
            matches!(&due[..], [Command::ExpireHolds { hold_ids, .. }] if hold_ids == &[Id::from("h1")]),
            "{due:?}"
        );
    }
}

#[test]
fn a_backlog_of_due_holds_is_expired_round_by_round() {
    let mut w = World::new(100_000, Rules::default());
    w.ok(issue("alice", 20_000));
    let placed: Vec<Operation> = (0..2 * EXPIRE_AT_ONCE + 5)
        .map(|i| place(&format!("h{i}"), "alice", "bob", 1, 60))
        .collect();
    let (events, _) = w
        .book
        .decide_batch(&TOKEN.into(), &placed, BatchMode::AllOrNothing, &w.ctx())
        .expect("placed");
    for event in &events {
        w.book.apply(event);
    }
    w.advance(61);
    let mut rounds = 0;
    loop {
        let due = w.book.expired_holds(w.now);
        let Some(Command::ExpireHolds { hold_ids, .. }) = due.first() else {
            break;
        };
        assert!(
            hold_ids.len() <= EXPIRE_AT_ONCE,
            "one round expires at most {EXPIRE_AT_ONCE}"
        );
        for command in due {
            w.run(command).expect("expired");
        }
        rounds += 1;
    }
    assert_eq!(rounds, 3);
    assert!(w.token().holds.is_empty());
    assert_eq!(w.holding("alice").held.0, 0);
}
