//! Share classes: balances per class, movements within a class, each class's own rules,
//! holds of a class, conversions and reversals.

use super::*;

fn define(id: &str, rules: ClassRules) -> Operation {
    Operation::DefineClass {
        class: id.into(),
        name: format!("Class {id} shares"),
        rules,
    }
}

fn class(id: &str) -> Option<Id> {
    Some(id.into())
}

fn issue_in(to: &str, amount: u128, in_class: &str) -> Operation {
    Operation::Issue {
        to: to.into(),
        amount: Amount(amount),
        class: class(in_class),
    }
}

fn transfer_in(from: &str, to: &str, amount: u128, in_class: &str) -> Operation {
    Operation::Transfer {
        from: from.into(),
        to: to.into(),
        amount: Amount(amount),
        class: class(in_class),
    }
}

fn convert(investor: &str, from: Option<&str>, to: Option<&str>, amount: u128) -> Operation {
    Operation::Convert {
        investor_id: investor.into(),
        from_class: from.map(Id::from),
        to_class: to.map(Id::from),
        amount: Amount(amount),
        reason: "board resolution 2025-07".into(),
    }
}

impl World {
    /// `(balance, held)` of `investor` in `class` (`None`: the default class).
    fn position(&self, investor: &str, class: Option<&str>) -> (u128, u128) {
        let p = self
            .token()
            .holding(investor)
            .map(|h| h.position(class.map(Id::from).as_ref()))
            .unwrap_or_default();
        (p.balance.0, p.held.0)
    }

    fn class_supply(&self, class: Option<&str>) -> u128 {
        self.token().class_supply(class.map(Id::from).as_ref()).0
    }

    /// A token with classes A and B (no rules of their own), alice holding 100 of the
    /// default class, 50 of A and 30 of B.
    fn with_classes() -> World {
        let mut w = World::new(1_000_000, Rules::default());
        w.ok(define("A", ClassRules::default()));
        w.ok(define("B", ClassRules::default()));
        w.ok(issue("alice", 100));
        w.ok(issue_in("alice", 50, "A"));
        w.ok(issue_in("alice", 30, "B"));
        w
    }
}

#[test]
fn every_movement_stays_in_its_class() {
    let mut w = World::with_classes();
    assert_eq!(
        w.balance("alice"),
        180,
        "the holding's total counts every class"
    );
    assert_eq!(w.position("alice", None), (100, 0));
    assert_eq!(w.position("alice", Some("A")), (50, 0));
    assert_eq!((w.class_supply(None), w.class_supply(Some("A"))), (100, 50));

    let events = w.ok(transfer_in("alice", "bob", 20, "A"));
    assert!(matches!(
        &events[0].change,
        Change::Transferred { class: Some(c), .. } if c.as_str() == "A"
    ));
    assert_eq!(w.position("alice", Some("A")), (30, 0));
    assert_eq!(w.position("bob", Some("A")), (20, 0));
    assert_eq!(w.position("bob", None), (0, 0));
    assert_eq!(w.token().holders, 2);

    // The total would cover it; class A does not.
    let err = w.refused(transfer_in("alice", "bob", 31, "A"), "insufficient_balance");
    assert!(err.message.contains("class A"), "{}", err.message);
    w.ok(transfer("alice", "bob", 100));
    w.refused(transfer("alice", "bob", 1), "insufficient_balance");

    let err = w.refuse(transfer_in("alice", "bob", 1, "C"));
    assert_eq!(
        (err.kind, err.code, err.field.as_deref()),
        (ErrorKind::NotFound, "class_not_found", Some("class"))
    );

    // Redeeming takes the class out of its supply.
    w.ok(Operation::Redeem {
        from: "bob".into(),
        amount: Amount(5),
        class: class("A"),
    });
    assert_eq!(w.class_supply(Some("A")), 45);
    assert_eq!(w.token().total_supply.0, 175);
}

#[test]
fn a_class_carries_its_own_rules_on_top_of_the_tokens() {
    let mut w = World::new(1_000_000, Rules::default());
    w.register(
        "ulla",
        InvestorProfile {
            accredited: false,
            ..verified("DE")
        },
    );
    let locked_until = T0 + Duration::days(30);
    w.ok(define(
        "PREF",
        ClassRules {
            require_accreditation: true,
            denied_countries: countries(&["FR"]),
            max_balance: Some(Amount(500)),
            max_supply: Some(Amount(1_000)),
            locked_until: Some(locked_until),
            ..ClassRules::default()
        },
    ));
    // The token lets ulla and carol hold its default class; the class does not.
    w.ok(issue("ulla", 10));
    w.ok(issue("carol", 10));
    let err = w.refused(issue_in("ulla", 10, "PREF"), "accreditation_required");
    assert!(err.message.contains("class PREF"), "{}", err.message);
    w.refused(issue_in("carol", 10, "PREF"), "country_not_allowed");
    w.refused(issue_in("alice", 501, "PREF"), "max_balance_exceeded");
    w.ok(issue_in("alice", 500, "PREF"));
    w.ok(issue_in("bob", 500, "PREF"));
    let err = w.refused(issue_in("dave", 1, "PREF"), "supply_cap_exceeded");
    assert!(err.message.contains("class PREF"), "{}", err.message);

    // Locked up until its date for the holders' own transfers; an agent's forced transfer
    // and a redemption are not stopped by it.
    let err = w.refused(transfer_in("alice", "dave", 10, "PREF"), "lockup_active");
    assert_eq!(err.field.as_deref(), Some("class"));
    w.ok(Operation::ForcedTransfer {
        from: "alice".into(),
        to: "dave".into(),
        amount: Amount(10),
        reason: "estate".into(),
        class: class("PREF"),
    });
    w.advance(30 * DAY);
    w.ok(transfer_in("alice", "dave", 10, "PREF"));
    assert_eq!(w.position("dave", Some("PREF")), (20, 0));
}

#[test]
fn units_of_a_locked_class_never_stand_in_for_a_freeze() {
    let mut w = World::new(1_000_000, Rules::default());
    w.ok(define(
        "L",
        ClassRules {
            locked_until: Some(T0 + Duration::days(365)),
            ..ClassRules::default()
        },
    ));
    w.ok(issue("alice", 100));
    w.ok(issue_in("alice", 100, "L"));
    w.ok(freeze_amount("alice", 60));
    // 200 held, 60 of it frozen: the 100 of L cannot move, so the freeze bites on the 100
    // that can, leaving 40.
    assert_eq!(w.token().transferable(w.holding("alice"), w.now).0, 40);
    w.refused(transfer("alice", "bob", 41), "lockup_active");
    w.ok(transfer("alice", "bob", 40));
    // An agent's forced transfer is not stopped by the class's lock-up.
    w.ok(Operation::ForcedTransfer {
        from: "alice".into(),
        to: "bob".into(),
        amount: Amount(40),
        reason: "court order".into(),
        class: class("L"),
    });
    w.advance(366 * DAY);
    assert_eq!(w.token().transferable(w.holding("alice"), w.now).0, 60);
}

#[test]
fn an_approval_passes_a_transfer_of_its_own_class_only() {
    let mut w = World::with_classes();
    w.update_rules(|r| r.transfer_approval_required = true);
    w.ok(Operation::ApproveTransfer {
        approval_id: "apr-a".into(),
        from: "alice".into(),
        to: "bob".into(),
        amount: Amount(10),
        class: class("A"),
    });
    let err = w.refused(transfer("alice", "bob", 10), "transfer_not_approved");
    assert!(err.message.contains("class default"), "{}", err.message);
    w.refused(
        transfer_in("alice", "bob", 10, "B"),
        "transfer_not_approved",
    );
    let events = w.ok(transfer_in("alice", "bob", 10, "A"));
    assert!(matches!(
        &events[0].change,
        Change::Transferred { approval_id: Some(id), .. } if id.as_str() == "apr-a"
    ));
    let err = w.refuse(Operation::ApproveTransfer {
        approval_id: "apr-z".into(),
        from: "alice".into(),
        to: "bob".into(),
        amount: Amount(10),
        class: class("Z"),
    });
    assert_eq!(err.code, "class_not_found");
}

#[test]
fn a_hold_reserves_units_of_its_class() {
    let mut w = World::with_classes();
    let expires_at = w.now + Duration::hours(1);
    let events = w.ok(Operation::PlaceHold {
        hold_id: "h1".into(),
        from: "alice".into(),
        to: "bob".into(),
        amount: Amount(40),
        expires_at,
        payment: None,
        class: class("A"),
    });
    assert!(
        matches!(&events[0].change, Change::HoldPlaced { hold, .. } if hold.class == class("A"))
    );
    assert_eq!(w.position("alice", Some("A")), (50, 40));
    assert_eq!(w.holding("alice").held.0, 40);
    w.refused(
        transfer_in("alice", "carol", 11, "A"),
        "insufficient_unheld_balance",
    );
    w.refused(
        convert("alice", Some("A"), Some("B"), 11),
        "insufficient_unheld_balance",
    );
    // Other classes move freely.
    w.ok(transfer("alice", "carol", 100));
    w.ok(Operation::PostHold {
        hold_id: "h1".into(),
        amount: Some(Amount(25)),
    });
    assert_eq!(w.position("alice", Some("A")), (25, 0));
    assert_eq!(w.position("bob", Some("A")), (25, 0));
    assert_eq!(w.holding("alice").held.0, 0);
}

#[test]
fn a_conversion_moves_units_between_classes_and_keeps_the_total() {
    let mut w = World::with_classes();
    w.ok(define(
        "C",
        ClassRules {
            max_supply: Some(Amount(60)),
            ..ClassRules::default()
        },
    ));
    let events = w.ok(convert("alice", None, Some("A"), 40));
    assert!(matches!(
        &events[0].change,
        Change::Converted { from_class: None, to_class: Some(a), amount, .. }
            if a.as_str() == "A" && amount.0 == 40
    ));
    assert_eq!(w.balance("alice"), 180);
    assert_eq!(w.position("alice", None), (60, 0));
    assert_eq!(w.position("alice", Some("A")), (90, 0));
    assert_eq!((w.class_supply(None), w.class_supply(Some("A"))), (60, 90));
    assert_eq!(w.token().total_supply.0, 180);

    w.refused(
        convert("alice", Some("B"), None, 31),
        "insufficient_balance",
    );
    w.refused(
        convert("alice", Some("A"), Some("C"), 61),
        "supply_cap_exceeded",
    );
    w.ok(convert("alice", Some("A"), Some("C"), 60));
    assert_eq!(w.position("alice", Some("A")), (30, 0));

    let err = w.refuse(convert("alice", Some("A"), Some("A"), 1));
    assert_eq!(
        (err.code, err.field.as_deref()),
        ("invalid_field", Some("to_class"))
    );
    let err = w.refuse(convert("alice", Some("A"), Some("Z"), 1));
    assert_eq!(
        (err.code, err.field.as_deref()),
        ("class_not_found", Some("to_class"))
    );

    w.ok(Operation::Pause);
    w.refused(convert("alice", None, Some("A"), 1), "token_paused");
    w.ok(Operation::Unpause);
    w.ok(freeze("alice"));
    w.refused(convert("alice", None, Some("A"), 1), "sender_frozen");
    w.ok(unfreeze("alice"));

    // A conversion is a movement, recorded with both classes, and undone by converting back.
    let version = w.token().version;
    w.ok(convert("alice", None, Some("B"), 5));
    let row = w
        .index
        .get(&keys::movement(TOKEN, version + 1))
        .expect("the conversion's movement row");
    let movement = Movement::from_row(row).expect("a movement");
    assert_eq!(
        (
            movement.kind,
            movement.class.clone(),
            movement.to_class.clone()
        ),
        (MovementKind::Converted, None, class("B"))
    );
    let err = w.refuse(Operation::Reverse {
        version: version + 1,
        reason: "mistake".into(),
        original: Some(movement),
    });
    assert_eq!(err.code, "conversion_not_reversible");
}

#[test]
fn a_reversal_moves_the_units_back_in_their_class() {
    let mut w = World::with_classes();
    w.ok(transfer_in("alice", "bob", 20, "B"));
    let version = w.token().version;
    let row = w.index.get(&keys::movement(TOKEN, version)).expect("a row");
    let original = Movement::from_row(row).expect("a movement");
    assert_eq!(original.class, class("B"));
    w.ok(Operation::Reverse {
        version,
        reason: "wrong investor".into(),
        original: Some(original),
    });
    assert_eq!(w.position("alice", Some("B")), (30, 0));
    assert_eq!(w.position("bob", Some("B")), (0, 0));
    assert_eq!(w.token().holders, 1);
}

#[test]
fn defining_classes_is_validated() {
    let mut w = World::with_classes();
    for bad in [
        "",
        "default",
        "Default",
        "with space",
        "a|b",
        &"x".repeat(33),
    ] {
        let err = w.refuse(define(bad, ClassRules::default()));
        assert_eq!(
            (err.code, err.field.as_deref()),
            ("invalid_field", Some("class")),
            "{bad:?}"
        );
    }
    let err = w.refuse(define(
        "A",
        ClassRules {
            max_supply: Some(Amount(49)),
            ..ClassRules::default()
        },
    ));
    assert_eq!(err.code, "class_supply_above_cap");
    // Redefining changes the rules and keeps the supply.
    w.ok(define(
        "A",
        ClassRules {
            max_supply: Some(Amount(50)),
            ..ClassRules::default()
        },
    ));
    assert_eq!(w.class_supply(Some("A")), 50);
    w.refused(issue_in("bob", 1, "A"), "supply_cap_exceeded");
    for i in 0..MAX_CLASSES - 2 {
        w.ok(define(&format!("K{i}"), ClassRules::default()));
    }
    let err = w.refuse(define("ONE-TOO-MANY", ClassRules::default()));
    assert_eq!(err.code, "too_many_classes");
}

#[test]
fn replaying_classes_rebuilds_the_same_token() {
    let mut w = World::with_classes();
    w.ok(transfer_in("alice", "bob", 20, "A"));
    w.ok(convert("bob", Some("A"), None, 5));
    let mut replayed = Book::default();
    for event in &w.log {
        replayed.apply(event);
    }
    assert_eq!(replayed.token(TOKEN), Some(w.token()));
    assert_eq!(w.position("bob", None), (5, 0));
    assert_eq!(
        class::breakdown(w.holding("bob")),
        BTreeMap::from([
            (
                "A".to_owned(),
                ClassPosition {
                    balance: Amount(15),
                    held: Amount::ZERO
                }
            ),
            (
                DEFAULT_CLASS.to_owned(),
                ClassPosition {
                    balance: Amount(5),
                    held: Amount::ZERO
                }
            ),
        ])
    );
}
