use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError};
use time::Duration;
use time::macros::{date, datetime};

use super::*;
use crate::{Amount, Country, Currency};

mod classes;
mod holds;
mod modules;
mod reversals;

const T0: Timestamp = datetime!(2025-01-15 10:00 UTC);
const TOKEN: &str = "tok";
const DAY: i64 = 86_400;

fn country(code: &str) -> Country {
    code.parse().expect("a valid country code")
}

fn eur() -> Currency {
    "EUR".parse().expect("a valid currency")
}

fn countries(codes: &[&str]) -> BTreeSet<Country> {
    codes.iter().map(|c| country(c)).collect()
}

/// A verified, accredited investor from `code` whose KYC runs until 2030.
fn verified(code: &str) -> InvestorProfile {
    InvestorProfile {
        identity_ref: format!("idp:{code}"),
        country: country(code),
        kyc_status: KycStatus::Verified,
        kyc_expires_on: Some(date!(2030 - 01 - 01)),
        accredited: true,
        wallet: None,
    }
}

fn spec(id: &str, asset_id: &str, symbol: &str, max_supply: u128, rules: Rules) -> TokenSpec {
    TokenSpec {
        id: id.into(),
        asset_id: asset_id.into(),
        symbol: symbol.into(),
        name: "Berlin Loft token".into(),
        decimals: 2,
        max_supply: Amount(max_supply),
        unit_price: Amount(10_000),
        currency: eur(),
        rules,
    }
}

fn issue(to: &str, amount: u128) -> Operation {
    Operation::Issue {
        class: None,
        to: to.into(),
        amount: Amount(amount),
    }
}

fn transfer(from: &str, to: &str, amount: u128) -> Operation {
    Operation::Transfer {
        class: None,
        from: from.into(),
        to: to.into(),
        amount: Amount(amount),
    }
}

fn forced(from: &str, to: &str, amount: u128) -> Operation {
    Operation::ForcedTransfer {
        class: None,
        from: from.into(),
        to: to.into(),
        amount: Amount(amount),
        reason: "court order".into(),
    }
}

fn redeem(from: &str, amount: u128) -> Operation {
    Operation::Redeem {
        class: None,
        from: from.into(),
        amount: Amount(amount),
    }
}

fn approve(from: &str, to: &str, amount: u128) -> Operation {
    Operation::ApproveTransfer {
        class: None,
        approval_id: format!("apr-{from}-{to}-{amount}").into(),
        from: from.into(),
        to: to.into(),
        amount: Amount(amount),
    }
}

fn freeze(investor: &str) -> Operation {
    Operation::Freeze {
        investor_id: investor.into(),
    }
}

fn unfreeze(investor: &str) -> Operation {
    Operation::Unfreeze {
        investor_id: investor.into(),
    }
}

fn freeze_amount(investor: &str, amount: u128) -> Operation {
    Operation::FreezeAmount {
        investor_id: investor.into(),
        amount: Amount(amount),
    }
}

fn unfreeze_amount(investor: &str, amount: u128) -> Operation {
    Operation::UnfreezeAmount {
        investor_id: investor.into(),
        amount: Amount(amount),
    }
}

/// Everything observable about a book, to check that a refused command changed nothing.
#[derive(Debug, PartialEq)]
struct Snapshot {
    tokens: Vec<Token>,
    investors: Vec<Investor>,
    balances: Vec<(Id, Amount)>,
    log_len: usize,
}

/// A book, the current time and every event applied to it.
struct World {
    book: Book,
    now: Timestamp,
    log: Vec<Event>,
    /// The index rows the book produced, as the store would keep them.
    index: BTreeMap<String, Vec<u8>>,
}

/// Balances of `token_id`'s holders at the end of `at`, read from `index` as the service reads
/// them from its store: each holder's last row at or before `at`.
fn balances_in(
    book: &Book,
    index: &BTreeMap<String, Vec<u8>>,
    token_id: &str,
    at: Timestamp,
) -> Vec<(Id, Amount)> {
    book.holders_ever(token_id)
        .into_iter()
        .filter_map(|(investor, no)| {
            let (low, high) = keys::holding_as_of(token_id, no, at);
            let (_, value) = index.range(low..=high).next_back()?;
            let balance = keys::balance_of(value).expect("a balance row");
            (balance > 0).then_some((investor, Amount(balance as u128)))
        })
        .collect()
}

impl World {
    fn empty() -> Self {
        World {
            book: Book::default(),
            now: T0,
            log: Vec::new(),
            index: BTreeMap::new(),
        }
    }

    /// A token `tok` (symbol LOFT) on the approved asset `asset1`, with no investors.
    fn token_only(max_supply: u128, rules: Rules) -> Self {
        let mut w = World::empty();
        w.run(Command::ObserveAsset {
            asset_id: "asset1".into(),
            state: AssetState::Approved,
            sequence: 0,
        })
        .expect("asset observed");
        w.run(Command::CreateToken(spec(
            TOKEN, "asset1", "LOFT", max_supply, rules,
        )))
        .expect("token created");
        w
    }

    /// [`World::token_only`] with alice, bob and dave from DE and carol from FR, all eligible.
    fn new(max_supply: u128, rules: Rules) -> Self {
        let mut w = World::token_only(max_supply, rules);
        for (id, code) in [
            ("alice", "DE"),
            ("bob", "DE"),
            ("carol", "FR"),
            ("dave", "DE"),
        ] {
            w.register(id, verified(code));
        }
        w
    }

    fn ctx(&self) -> Context {
        Context {
            now: self.now,
            actor: "agent_1".into(),
        }
    }

    fn run(&mut self, command: Command) -> Result<Vec<Event>> {
        let events = self.book.decide(&command, &self.ctx())?;
        for event in &events {
            self.book.apply(event);
        }
        self.index.extend(self.book.take_index());
        self.log.extend(events.iter().cloned());
        Ok(events)
    }

    fn balances_as_of(&self, token_id: &str, at: Timestamp) -> Vec<(Id, Amount)> {
        balances_in(&self.book, &self.index, token_id, at)
    }

    /// A distribution command, with the balances at its record date read now.
    fn distribute(&self, distribution: DistributionSpec) -> Command {
        Command::Distribute {
            token_id: TOKEN.into(),
            record_balances: RecordBalances {
                taken_at: self.now,
                balances: self.balances_as_of(TOKEN, distribution.record_date),
            },
            distribution,
        }
    }

    /// Registers `profile` as investor `id`, as its own person (one identity_ref is one
    /// investor).
    fn register(&mut self, id: &str, mut profile: InvestorProfile) {
        profile.identity_ref = format!("{}/{id}", profile.identity_ref);
        self.run(Command::RegisterInvestor {
            id: id.into(),
            profile,
        })
        .expect("investor registered");
    }

    fn update_investor(&mut self, id: &str, change: impl FnOnce(&mut InvestorProfile)) {
        let investor = self.book.investor(id).expect("investor exists");
        let mut profile = investor.profile.clone();
        let expected_version = investor.version;
        change(&mut profile);
        self.run(Command::UpdateInvestor {
            id: id.into(),
            expected_version,
            profile,
        })
        .expect("investor updated");
    }

    fn update_rules(&mut self, change: impl FnOnce(&mut Rules)) {
        let mut rules = self.token().rules.clone();
        change(&mut rules);
        let expected_version = self.token().version;
        self.run(Command::UpdateRules {
            token_id: TOKEN.into(),
            expected_version,
            rules,
        })
        .expect("rules updated");
    }

    fn op(&mut self, operation: Operation) -> Result<Vec<Event>> {
        self.run(Command::Operate {
            token_id: TOKEN.into(),
            operation,
        })
    }

    #[track_caller]
    fn ok(&mut self, operation: Operation) -> Vec<Event> {
        let description = format!("{operation:?}");
        match self.op(operation) {
            Ok(events) => events,
            Err(e) => panic!("{description} was refused: {} ({})", e.code, e.message),
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            tokens: self.book.tokens().cloned().collect(),
            investors: self.book.investors().cloned().collect(),
            balances: self.balances_as_of(TOKEN, datetime!(2100-01-01 0:00 UTC)),
            log_len: self.log.len(),
        }
    }

    /// Runs `command`, which must be refused and leave everything as it was.
    #[track_caller]
    fn refuse_command(&mut self, command: Command) -> Error {
        let before = self.snapshot();
        let err = self.run(command).expect_err("the command must be refused");
        assert_eq!(self.snapshot(), before, "a refused command changes nothing");
        err
    }

    #[track_caller]
    fn refuse(&mut self, operation: Operation) -> Error {
        self.refuse_command(Command::Operate {
            token_id: TOKEN.into(),
            operation,
        })
    }

    /// `operation` must be refused by compliance with `code`, changing nothing.
    #[track_caller]
    fn refused(&mut self, operation: Operation, code: &str) -> Error {
        let err = self.refuse(operation);
        assert_eq!(
            (err.kind, err.code),
            (ErrorKind::Refused, code),
            "{}",
            err.message
        );
        err
    }

    fn token(&self) -> &Token {
        self.book.token(TOKEN).expect("the token exists")
    }

    fn balance(&self, investor: &str) -> u128 {
        self.token().balance(investor).0
    }

    fn holding(&self, investor: &str) -> &Holding {
        self.token().holding(investor).expect("a holding")
    }

    fn advance(&mut self, seconds: i64) {
        self.now += Duration::seconds(seconds);
    }
}

// The order of the checks.

#[test]
fn the_check_order_is_the_documented_one() {
    assert_eq!(
        CHECK_ORDER,
        [
            "token_paused",
            "sender_frozen",
            "receiver_frozen",
            "kyc_not_verified",
            "kyc_expired",
            "accreditation_required",
            "country_not_allowed",
            "insufficient_balance",
            "insufficient_unfrozen_balance",
            "insufficient_unheld_balance",
            "lockup_active",
            "transfer_limit_exceeded",
            "transfer_not_approved",
            "supply_cap_exceeded",
            "below_country_minimum",
            "max_balance_exceeded",
            "max_holders_reached",
            "country_holders_reached",
        ]
    );
}

#[test]
fn a_transfer_breaking_every_rule_reports_them_in_check_order() {
    let rules = Rules {
        allowed_countries: Some(countries(&["DE", "FR"])),
        require_accreditation: true,
        max_holders: Some(3),
        lockup_seconds: DAY as u64,
        daily_transfer_limit: Some(Amount(30)),
        transfer_approval_required: true,
        min_transfer_by_country: [(country("FR"), Amount(50))].into(),
        max_holders_by_country: [(country("FR"), 1)].into(),
        ..Rules::default()
    };
    let mut w = World::new(1_000, rules);
    w.ok(issue("carol", 50)); // from FR: the one holder from FR the rules allow
    w.register(
        "zoe",
        InvestorProfile {
            kyc_status: KycStatus::Pending,
            kyc_expires_on: None,
            accredited: false,
            ..verified("US")
        },
    );
    w.ok(issue("alice", 100));
    w.ok(issue("bob", 100));
    w.advance(2 * DAY);
    w.ok(issue("alice", 100)); // locked for another day
    w.ok(freeze_amount("alice", 50)); // 200 held, 150 unfrozen, 50 transferable
    w.ok(approve("alice", "bob", 10)); // the hold below uses it up
    w.ok(Operation::PlaceHold {
        class: None,
        hold_id: "h1".into(),
        from: "alice".into(),
        to: "bob".into(),
        amount: Amount(10),
        expires_at: w.now + Duration::seconds(DAY),
        payment: None,
    }); // 140 neither frozen nor held, 40 transferable
    w.ok(Operation::Pause);
    w.ok(freeze("alice"));
    w.ok(freeze("zoe"));

    let mut amount = 250;
    let mut seen = Vec::new();
    loop {
        let before = w.snapshot();
        match w.op(transfer("alice", "zoe", amount)) {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(w.snapshot(), before);
                assert_eq!(e.kind, ErrorKind::Refused);
                seen.push(e.code);
                // Fix exactly the rule that refused, then try again.
                match e.code {
                    "token_paused" => {
                        w.ok(Operation::Unpause);
                    }
                    "sender_frozen" => {
                        w.ok(unfreeze("alice"));
                    }
                    "receiver_frozen" => {
                        w.ok(unfreeze("zoe"));
                    }
                    "kyc_not_verified" => w.update_investor("zoe", |p| {
                        p.kyc_status = KycStatus::Verified;
                        p.kyc_expires_on = Some(date!(2025 - 01 - 01));
                    }),
                    "kyc_expired" => {
                        w.update_investor("zoe", |p| p.kyc_expires_on = Some(date!(2031 - 01 - 01)))
                    }
                    "accreditation_required" => w.update_investor("zoe", |p| p.accredited = true),
                    "country_not_allowed" => {
                        w.update_investor("zoe", |p| p.country = country("FR"))
                    }
                    "insufficient_balance" => amount = 160,
                    "insufficient_unfrozen_balance" => amount = 145,
                    "insufficient_unheld_balance" => amount = 60,
                    "lockup_active" => amount = 40,
                    "transfer_limit_exceeded" => w.update_rules(|r| {
                        r.daily_transfer_limit = None;
                        r.max_balance = Some(Amount(25));
                    }),
                    "transfer_not_approved" => {
                        w.ok(approve("alice", "zoe", 40));
                    }
                    "below_country_minimum" => {
                        w.update_rules(|r| r.min_transfer_by_country.clear())
                    }
                    "max_balance_exceeded" => w.update_rules(|r| r.max_balance = None),
                    "max_holders_reached" => w.update_rules(|r| r.max_holders = Some(4)),
                    "country_holders_reached" => {
                        w.update_rules(|r| r.max_holders_by_country.clear())
                    }
                    other => panic!("unexpected code {other}"),
                }
            }
        }
        assert!(seen.len() <= CHECK_ORDER.len(), "the ladder ends");
    }
    let expected: Vec<&str> = CHECK_ORDER
        .iter()
        .copied()
        .filter(|c| *c != "supply_cap_exceeded")
        .collect();
    assert_eq!(seen, expected);
    assert_eq!((w.balance("alice"), w.balance("zoe")), (160, 40));
}

#[test]
fn an_issue_breaking_the_caps_reports_them_in_check_order() {
    let mut w = World::new(300, Rules::default());
    w.ok(issue("alice", 100));
    w.ok(issue("bob", 100));
    w.ok(issue("carol", 90));
    w.update_rules(|r| {
        r.max_balance = Some(Amount(50));
        r.max_holders = Some(3);
    });
    assert_eq!(
        w.refused(issue("dave", 60), "supply_cap_exceeded")
            .field
            .as_deref(),
        Some("amount")
    );
    w.ok(redeem("alice", 100));
    assert_eq!(
        w.refused(issue("dave", 60), "max_balance_exceeded")
            .field
            .as_deref(),
        Some("amount")
    );
    w.update_rules(|r| {
        r.max_balance = None;
        r.max_holders = Some(2);
    });
    assert_eq!(
        w.refused(issue("dave", 60), "max_holders_reached")
            .field
            .as_deref(),
        Some("to")
    );
    w.update_rules(|r| r.max_holders = Some(3));
    w.ok(issue("dave", 60));
    assert_eq!(w.token().total_supply, Amount(250));
}

// One test per reason code.

#[test]
fn token_paused() {
    let mut w = World::new(1_000, Rules::default());
    w.ok(issue("alice", 100));
    let events = w.ok(Operation::Pause);
    assert_eq!(events[0].change.name(), "paused");
    assert!(w.token().paused);
    let err = w.refused(transfer("alice", "bob", 10), "token_paused");
    assert_eq!(err.field, None);
    w.refused(issue("bob", 10), "token_paused");
    assert_eq!(w.refuse(Operation::Pause).code, "already_paused");
    w.ok(Operation::Unpause);
    assert_eq!(w.refuse(Operation::Unpause).code, "not_paused");
    w.ok(transfer("alice", "bob", 10));
    assert_eq!((w.balance("alice"), w.balance("bob")), (90, 10));
}

#[test]
fn sender_frozen() {
    let mut w = World::new(1_000, Rules::default());
    w.ok(issue("alice", 100));
    w.ok(freeze("alice"));
    let err = w.refused(transfer("alice", "bob", 10), "sender_frozen");
    assert_eq!(err.field.as_deref(), Some("from"));
    w.refused(redeem("alice", 10), "sender_frozen");
    // A frozen investor cannot receive either.
    w.refused(issue("alice", 10), "receiver_frozen");
    w.ok(unfreeze("alice"));
    w.ok(transfer("alice", "bob", 10));
}

#[test]
fn receiver_frozen() {
    let mut w = World::new(1_000, Rules::default());
    w.ok(issue("alice", 100));
    w.ok(freeze("bob"));
    assert!(w.holding("bob").frozen, "a non-holder can be frozen");
    let err = w.refused(transfer("alice", "bob", 10), "receiver_frozen");
    assert_eq!(err.field.as_deref(), Some("to"));
    w.refused(issue("bob", 10), "receiver_frozen");
    w.refused(forced("alice", "bob", 10), "receiver_frozen");
    w.ok(unfreeze("bob"));
    w.ok(issue("bob", 10));
    assert_eq!(w.balance("bob"), 10);
}

#[test]
fn kyc_not_verified() {
    let mut w = World::new(1_000, Rules::default());
    for (id, status) in [
        ("pending", KycStatus::Pending),
        ("rejected", KycStatus::Rejected),
    ] {
        w.register(
            id,
            InvestorProfile {
                kyc_status: status,
                kyc_expires_on: None,
                ..verified("DE")
            },
        );
        let err = w.refused(issue(id, 10), "kyc_not_verified");
        assert_eq!(err.field.as_deref(), Some("to"));
    }
    // The sender's KYC counts for a voluntary transfer.
    w.ok(issue("alice", 100));
    w.update_investor("alice", |p| {
        p.kyc_status = KycStatus::Pending;
        p.kyc_expires_on = None;
    });
    let err = w.refused(transfer("alice", "bob", 10), "kyc_not_verified");
    assert_eq!(err.field.as_deref(), Some("from"));
    w.ok(issue("bob", 10));
    let err = w.refused(transfer("bob", "pending", 5), "kyc_not_verified");
    assert_eq!(err.field.as_deref(), Some("to"));
}

#[test]
fn kyc_expired() {
    let mut w = World::new(1_000, Rules::default());
    w.register(
        "lapsed",
        InvestorProfile {
            kyc_expires_on: Some(date!(2025 - 01 - 14)),
            ..verified("DE")
        },
    );
    w.register(
        "expired",
        InvestorProfile {
            kyc_status: KycStatus::Expired,
            ..verified("DE")
        },
    );
    w.register(
        "today",
        InvestorProfile {
            kyc_expires_on: Some(T0.date()),
            ..verified("DE")
        },
    );
    assert_eq!(
        w.refused(issue("lapsed", 10), "kyc_expired")
            .field
            .as_deref(),
        Some("to")
    );
    w.refused(issue("expired", 10), "kyc_expired");
    // Valid through the whole day of expiry.
    w.ok(issue("today", 10));
    w.advance(14 * 3_600);
    assert_eq!(w.now.date(), date!(2025 - 01 - 16));
    w.refused(issue("today", 10), "kyc_expired");
    let err = w.refused(transfer("today", "bob", 5), "kyc_expired");
    assert_eq!(err.field.as_deref(), Some("from"));
    assert_eq!(w.balance("today"), 10);
}

#[test]
fn accreditation_required() {
    let rules = Rules {
        require_accreditation: true,
        ..Rules::default()
    };
    let mut w = World::new(1_000, rules);
    w.register(
        "retail",
        InvestorProfile {
            accredited: false,
            ..verified("DE")
        },
    );
    assert_eq!(
        w.refused(issue("retail", 10), "accreditation_required")
            .field
            .as_deref(),
        Some("to")
    );
    w.ok(issue("alice", 100));
    w.refused(transfer("alice", "retail", 10), "accreditation_required");
    w.refused(forced("alice", "retail", 10), "accreditation_required");
    // Only receivers must be accredited: a holder who loses it can still sell.
    w.update_investor("alice", |p| p.accredited = false);
    w.ok(transfer("alice", "bob", 10));
    assert_eq!(w.balance("retail"), 0);
}

#[test]
fn country_not_allowed() {
    let rules = Rules {
        allowed_countries: Some(countries(&["DE", "FR"])),
        denied_countries: countries(&["FR"]),
        ..Rules::default()
    };
    let mut w = World::new(1_000, rules);
    w.register("sam", verified("US"));
    // Not on the allow list.
    assert_eq!(
        w.refused(issue("sam", 10), "country_not_allowed")
            .field
            .as_deref(),
        Some("to")
    );
    // On the allow list but also denied: the denial wins.
    w.refused(issue("carol", 10), "country_not_allowed");
    w.ok(issue("alice", 100));
    w.refused(transfer("alice", "sam", 10), "country_not_allowed");
    w.refused(transfer("alice", "carol", 10), "country_not_allowed");
    // Without an allow list, only the deny list applies.
    w.update_rules(|r| r.allowed_countries = None);
    w.ok(transfer("alice", "sam", 10));
    w.refused(transfer("alice", "carol", 10), "country_not_allowed");
    assert_eq!(w.balance("sam"), 10);
}

#[test]
fn insufficient_balance() {
    let mut w = World::new(1_000, Rules::default());
    w.ok(issue("alice", 100));
    let err = w.refused(transfer("alice", "bob", 101), "insufficient_balance");
    assert_eq!(err.field.as_deref(), Some("amount"));
    w.refused(transfer("bob", "alice", 1), "insufficient_balance");
    w.refused(redeem("alice", 101), "insufficient_balance");
    w.refused(forced("alice", "bob", 101), "insufficient_balance");
    w.ok(transfer("alice", "bob", 100));
    assert_eq!((w.balance("alice"), w.balance("bob")), (0, 100));
}

#[test]
fn insufficient_unfrozen_balance() {
    let mut w = World::new(1_000, Rules::default());
    w.ok(issue("alice", 100));
    w.ok(freeze_amount("alice", 30));
    let err = w.refused(
        transfer("alice", "bob", 71),
        "insufficient_unfrozen_balance",
    );
    assert_eq!(err.field.as_deref(), Some("amount"));
    w.refused(redeem("alice", 71), "insufficient_unfrozen_balance");
    w.refused(forced("alice", "bob", 71), "insufficient_unfrozen_balance");
    w.refused(freeze_amount("alice", 71), "insufficient_unfrozen_balance");
    w.ok(transfer("alice", "bob", 70));
    let holding = w.holding("alice");
    assert_eq!(
        (holding.balance, holding.frozen_amount),
        (Amount(30), Amount(30))
    );
}

#[test]
fn lockup_active() {
    let rules = Rules {
        lockup_seconds: DAY as u64,
        ..Rules::default()
    };
    let mut w = World::new(1_000, rules);
    let events = w.ok(issue("alice", 100));
    assert_eq!(
        events[0].change,
        Change::Issued {
            class: None,
            token_id: TOKEN.into(),
            to: "alice".into(),
            amount: Amount(100),
            locked_until: Some(T0 + Duration::days(1)),
        }
    );
    let err = w.refused(transfer("alice", "bob", 1), "lockup_active");
    assert_eq!(err.field.as_deref(), Some("amount"));
    w.advance(DAY - 1);
    w.refused(transfer("alice", "bob", 1), "lockup_active");
    w.advance(1);
    // The lock ends at the instant given: now it is free.
    w.ok(issue("alice", 50)); // a new lock for this part only
    assert_eq!(w.holding("alice").transferable(w.now), Amount(100));
    w.refused(transfer("alice", "bob", 101), "lockup_active");
    w.ok(transfer("alice", "bob", 100));
    assert_eq!((w.balance("alice"), w.balance("bob")), (50, 100));
    assert_eq!(
        w.holding("alice").locks,
        vec![(w.now + Duration::days(1), Amount(50))],
        "expired locks are dropped"
    );
}

#[test]
fn transfer_limit_exceeded_daily() {
    let rules = Rules {
        daily_transfer_limit: Some(Amount(100)),
        ..Rules::default()
    };
    let mut w = World::new(10_000, rules);
    w.ok(issue("alice", 1_000));
    w.ok(transfer("alice", "bob", 60));
    let err = w.refused(transfer("alice", "bob", 41), "transfer_limit_exceeded");
    assert_eq!(err.field.as_deref(), Some("amount"));
    assert!(err.message.contains("day"), "{}", err.message);
    w.ok(transfer("alice", "carol", 40));
    assert_eq!(w.holding("alice").sent_today(w.now), Amount(100));
    w.refused(transfer("alice", "bob", 1), "transfer_limit_exceeded");
    // Received amounts and forced transfers do not count; other senders have their own limit.
    w.ok(transfer("bob", "alice", 60));
    w.ok(forced("alice", "dave", 10));
    assert_eq!(w.holding("alice").sent_today(w.now), Amount(100));
    // The next UTC day starts afresh.
    w.advance(13 * 3_600 + 59 * 60);
    w.refused(transfer("alice", "bob", 1), "transfer_limit_exceeded");
    w.advance(60);
    assert_eq!(w.now, datetime!(2025-01-16 0:00 UTC));
    w.ok(transfer("alice", "bob", 100));
    assert_eq!(w.balance("alice"), 1_000 - 100 + 60 - 10 - 100);
}

#[test]
fn transfer_limit_exceeded_monthly() {
    let rules = Rules {
        daily_transfer_limit: Some(Amount(100)),
        monthly_transfer_limit: Some(Amount(150)),
        ..Rules::default()
    };
    let mut w = World::new(10_000, rules);
    w.now = datetime!(2025-01-30 12:00 UTC);
    w.ok(issue("alice", 1_000));
    w.ok(transfer("alice", "bob", 100));
    w.advance(DAY);
    let err = w.refused(transfer("alice", "bob", 51), "transfer_limit_exceeded");
    assert!(err.message.contains("month"), "{}", err.message);
    w.ok(transfer("alice", "bob", 50));
    assert_eq!(w.holding("alice").sent_this_month(w.now), Amount(150));
    w.advance(DAY);
    assert_eq!(w.now.date(), date!(2025 - 02 - 01));
    w.ok(transfer("alice", "bob", 100));
    assert_eq!(w.holding("alice").sent_this_month(w.now), Amount(100));
    assert_eq!(w.balance("bob"), 250);
}

#[test]
fn supply_cap_exceeded() {
    let mut w = World::new(1_000, Rules::default());
    w.ok(issue("alice", 600));
    let err = w.refused(issue("bob", 401), "supply_cap_exceeded");
    assert_eq!(err.field.as_deref(), Some("amount"));
    w.ok(issue("bob", 400));
    assert_eq!(w.token().total_supply, Amount(1_000));
    w.refused(issue("bob", 1), "supply_cap_exceeded");
    w.ok(redeem("alice", 10));
    w.ok(issue("bob", 10));
    assert_eq!(w.token().total_supply, w.token().spec.max_supply);
}

#[test]
fn an_enormous_issue_is_refused_not_overflowed() {
    let mut w = World::new(1_000, Rules::default());
    w.ok(issue("alice", 1));
    // 1 + (2^128 - 1) overflows a u128: it must be refused, not panic or wrap round to 0.
    w.refused(issue("bob", u128::MAX), "supply_cap_exceeded");
    w.refused(issue("bob", u128::MAX - 1), "supply_cap_exceeded");
    assert_eq!(w.token().total_supply, Amount(1));
    assert_eq!(w.balance("bob"), 0);
}

#[test]
fn max_balance_exceeded() {
    let rules = Rules {
        max_balance: Some(Amount(500)),
        ..Rules::default()
    };
    let mut w = World::new(10_000, rules);
    w.ok(issue("alice", 500));
    let err = w.refused(issue("alice", 1), "max_balance_exceeded");
    assert_eq!(err.field.as_deref(), Some("amount"));
    w.ok(issue("bob", 300));
    w.refused(transfer("bob", "alice", 1), "max_balance_exceeded");
    w.refused(forced("bob", "alice", 1), "max_balance_exceeded");
    w.ok(redeem("alice", 100));
    w.ok(transfer("bob", "alice", 100));
    assert_eq!(w.balance("alice"), 500);
}

#[test]
fn max_holders_reached() {
    let rules = Rules {
        max_holders: Some(2),
        ..Rules::default()
    };
    let mut w = World::new(10_000, rules);
    w.ok(issue("alice", 100));
    w.ok(issue("bob", 100));
    assert_eq!(w.token().holders, 2);
    let err = w.refused(issue("carol", 1), "max_holders_reached");
    assert_eq!(err.field.as_deref(), Some("to"));
    w.refused(transfer("alice", "carol", 50), "max_holders_reached");
    w.refused(forced("alice", "carol", 50), "max_holders_reached");
    // An existing holder can take more, and a sender leaving frees a place.
    w.ok(issue("bob", 10));
    w.ok(transfer("alice", "carol", 100));
    assert_eq!(w.token().holders, 2);
    assert_eq!(w.balance("alice"), 0);
    w.refused(issue("alice", 1), "max_holders_reached");
    w.ok(redeem("carol", 100));
    assert_eq!(w.token().holders, 1);
    w.ok(issue("alice", 1));
    assert_eq!(w.token().holders, 2);
}

// Other refusals that are not compliance.

#[test]
fn malformed_operations_are_invalid() {
    let mut w = World::new(1_000, Rules::default());
    w.ok(issue("alice", 100));
    for operation in [
        issue("alice", 0),
        transfer("alice", "bob", 0),
        redeem("alice", 0),
        freeze_amount("alice", 0),
        unfreeze_amount("alice", 0),
    ] {
        let err = w.refuse(operation);
        assert_eq!(
            (err.kind, err.field.as_deref()),
            (ErrorKind::Invalid, Some("amount"))
        );
    }
    let err = w.refuse(transfer("alice", "alice", 1));
    assert_eq!(
        (err.kind, err.field.as_deref()),
        (ErrorKind::Invalid, Some("to"))
    );
    let err = w.refuse(issue("nobody", 1));
    assert_eq!(
        (err.kind, err.code, err.field.as_deref()),
        (ErrorKind::NotFound, "investor_not_found", Some("to"))
    );
    let err = w.refuse(transfer("nobody", "alice", 1));
    assert_eq!(err.field.as_deref(), Some("from"));
    let err = w.refuse_command(Command::Operate {
        token_id: "nope".into(),
        operation: issue("alice", 1),
    });
    assert_eq!(
        (err.kind, err.code),
        (ErrorKind::NotFound, "token_not_found")
    );
}

#[test]
fn stale_versions_are_refused() {
    let mut w = World::new(1_000, Rules::default());
    w.ok(issue("alice", 1));
    let err = w.refuse_command(Command::UpdateRules {
        token_id: TOKEN.into(),
        expected_version: 1,
        rules: Rules::default(),
    });
    assert_eq!((err.kind, err.code), (ErrorKind::Stale, "version_mismatch"));
    let err = w.refuse_command(Command::UpdateInvestor {
        id: "alice".into(),
        expected_version: 2,
        profile: verified("FR"),
    });
    assert_eq!((err.kind, err.code), (ErrorKind::Stale, "version_mismatch"));
    let err = w.refuse_command(Command::UpdateRules {
        token_id: TOKEN.into(),
        expected_version: w.token().version,
        rules: Rules {
            max_holders: Some(0),
            ..Rules::default()
        },
    });
    assert_eq!(err.field.as_deref(), Some("rules.max_holders"));
}

#[test]
fn investors_are_registered_once_with_a_consistent_profile() {
    let mut w = World::new(1_000, Rules::default());
    let err = w.refuse_command(Command::RegisterInvestor {
        id: "alice".into(),
        profile: verified("DE"),
    });
    assert_eq!(
        (err.kind, err.code),
        (ErrorKind::Conflict, "investor_exists")
    );
    let err = w.refuse_command(Command::RegisterInvestor {
        id: "new".into(),
        profile: InvestorProfile {
            kyc_expires_on: None,
            ..verified("DE")
        },
    });
    assert_eq!(err.field.as_deref(), Some("kyc_expires_on"));
    w.update_investor("alice", |p| p.country = country("FR"));
    let alice = w.book.investor("alice").expect("alice");
    assert_eq!((alice.version, alice.profile.country), (2, country("FR")));
    let order: Vec<&str> = w.book.investors().map(|i| i.id.as_str()).collect();
    assert_eq!(order, ["alice", "bob", "carol", "dave"]);
}

// Forced transfers, redemptions, freezes.

#[test]
fn a_forced_transfer_ignores_pause_sender_freeze_lockup_and_limits() {
    let rules = Rules {
        lockup_seconds: DAY as u64,
        daily_transfer_limit: Some(Amount(10)),
        ..Rules::default()
    };
    let mut w = World::new(1_000, rules);
    w.ok(issue("alice", 100));
    w.ok(Operation::Pause);
    w.ok(freeze("alice"));
    let events = w.ok(forced("alice", "bob", 60));
    assert_eq!(
        events[0].change,
        Change::Transferred {
            class: None,
            token_id: TOKEN.into(),
            from: "alice".into(),
            to: "bob".into(),
            amount: Amount(60),
            forced: true,
            reason: Some("court order".into()),
            approval_id: None,
        }
    );
    assert_eq!((w.balance("alice"), w.balance("bob")), (40, 60));
    let alice = w.holding("alice");
    assert!(alice.frozen, "the sender stays frozen");
    assert_eq!(
        alice.sent_today(w.now),
        Amount::ZERO,
        "a forced transfer uses no limit"
    );
    assert_eq!(
        alice.locks,
        vec![(T0 + Duration::days(1), Amount(40))],
        "locks shrink with the balance"
    );
    assert!(w.token().paused);
    // The tokens the receiver got this way are not under lock-up for them.
    w.ok(Operation::Unpause);
    w.ok(transfer("bob", "carol", 10));
}

#[test]
fn a_forced_transfer_still_needs_an_eligible_receiver_and_unfrozen_tokens() {
    let rules = Rules {
        allowed_countries: Some(countries(&["DE", "FR"])),
        ..Rules::default()
    };
    let mut w = World::new(1_000, rules);
    w.register("sam", verified("US"));
    w.register(
        "pat",
        InvestorProfile {
            kyc_status: KycStatus::Pending,
            kyc_expires_on: None,
            ..verified("DE")
        },
    );
    w.ok(issue("alice", 100));
    w.refused(forced("alice", "sam", 10), "country_not_allowed");
    w.refused(forced("alice", "pat", 10), "kyc_not_verified");
    w.ok(freeze("bob"));
    w.refused(forced("alice", "bob", 10), "receiver_frozen");
    w.ok(freeze_amount("alice", 70));
    w.refused(
        forced("alice", "carol", 31),
        "insufficient_unfrozen_balance",
    );
    w.ok(forced("alice", "carol", 30));
    let alice = w.holding("alice");
    assert_eq!(
        (alice.balance, alice.frozen_amount),
        (Amount(70), Amount(70))
    );
    let err = w.refuse(Operation::ForcedTransfer {
        class: None,
        from: "alice".into(),
        to: "carol".into(),
        amount: Amount(1),
        reason: "  ".into(),
    });
    assert_eq!(
        (err.kind, err.field.as_deref()),
        (ErrorKind::Invalid, Some("reason"))
    );
    let err = w.refuse(forced("carol", "carol", 1));
    assert_eq!(err.field.as_deref(), Some("to"));
}

#[test]
fn redeeming_burns_supply_ignoring_lockup_but_not_freezes() {
    let rules = Rules {
        lockup_seconds: DAY as u64,
        ..Rules::default()
    };
    let mut w = World::new(1_000, rules);
    w.ok(issue("alice", 100));
    w.ok(issue("bob", 50));
    let events = w.ok(redeem("alice", 40));
    assert_eq!(events[0].change.name(), "redeemed");
    assert_eq!(
        (w.balance("alice"), w.token().total_supply),
        (60, Amount(110))
    );
    assert_eq!(
        w.holding("alice").locks,
        vec![(T0 + Duration::days(1), Amount(60))]
    );
    w.refused(redeem("alice", 61), "insufficient_balance");
    w.ok(freeze_amount("alice", 30));
    w.refused(redeem("alice", 31), "insufficient_unfrozen_balance");
    w.ok(redeem("alice", 30));
    w.ok(unfreeze_amount("alice", 30));
    w.ok(redeem("alice", 30));
    assert_eq!(w.balance("alice"), 0);
    assert_eq!(w.token().holders, 1);
    assert_eq!(w.token().total_supply, Amount(50));
    assert!(w.holding("alice").locks.is_empty());
    w.ok(freeze("bob"));
    w.refused(redeem("bob", 1), "sender_frozen");
}

#[test]
fn freezing_and_unfreezing() {
    let mut w = World::new(1_000, Rules::default());
    w.ok(issue("alice", 100));
    let events = w.ok(freeze("alice"));
    assert_eq!(events[0].change.name(), "investor_frozen");
    let err = w.refuse(freeze("alice"));
    assert_eq!(
        (err.kind, err.code),
        (ErrorKind::Conflict, "already_frozen")
    );
    w.ok(unfreeze("alice"));
    assert!(!w.holding("alice").frozen);
    let err = w.refuse(unfreeze("alice"));
    assert_eq!((err.kind, err.code), (ErrorKind::Conflict, "not_frozen"));
    assert_eq!(
        w.refuse(unfreeze("bob")).code,
        "not_frozen",
        "never held, never frozen"
    );

    w.ok(freeze_amount("alice", 30));
    w.ok(freeze_amount("alice", 20));
    assert_eq!(w.holding("alice").frozen_amount, Amount(50));
    w.refused(freeze_amount("alice", 51), "insufficient_unfrozen_balance");
    w.refused(freeze_amount("bob", 1), "insufficient_unfrozen_balance");
    let err = w.refuse(unfreeze_amount("alice", 51));
    assert_eq!(
        (err.kind, err.code, err.field.as_deref()),
        (
            ErrorKind::Conflict,
            "insufficient_frozen_amount",
            Some("amount")
        )
    );
    w.ok(unfreeze_amount("alice", 45));
    assert_eq!(w.holding("alice").frozen_amount, Amount(5));
    assert_eq!(
        w.holding("alice").balance,
        Amount(100),
        "freezing moves no tokens"
    );
    let err = w.refuse(freeze("nobody"));
    assert_eq!(
        (err.code, err.field.as_deref()),
        ("investor_not_found", Some("investor_id"))
    );
}

// Batches.

#[test]
fn a_batch_decides_each_operation_on_the_state_the_previous_ones_leave() {
    let mut w = World::new(1_000, Rules::default());
    let version = w.token().version;
    let events = w
        .run(Command::Batch {
            token_id: TOKEN.into(),
            operations: vec![
                issue("alice", 100),
                transfer("alice", "bob", 30),
                freeze_amount("bob", 10),
            ],
            mode: BatchMode::AllOrNothing,
        })
        .expect("the batch passes");
    let names: Vec<_> = events.iter().map(|e| e.change.name()).collect();
    assert_eq!(names, ["issued", "transferred", "amount_frozen"]);
    assert_eq!((w.balance("alice"), w.balance("bob")), (70, 30));
    assert_eq!(w.holding("bob").frozen_amount, Amount(10));
    assert_eq!(w.token().version, version + 3);
}

#[test]
fn a_batch_is_all_or_nothing_and_names_the_failing_operation() {
    let rules = Rules {
        max_holders: Some(3),
        ..Rules::default()
    };
    let mut w = World::new(10_000, rules);
    w.ok(issue("alice", 100));

    let batch = |operations| Command::Batch {
        token_id: TOKEN.into(),
        operations,
        mode: BatchMode::AllOrNothing,
    };
    let err = w.refuse_command(batch(vec![
        issue("alice", 50),
        transfer("alice", "bob", 100),
        transfer("alice", "carol", 60),
    ]));
    assert_eq!(
        (err.kind, err.code),
        (ErrorKind::Refused, "insufficient_balance")
    );
    assert_eq!(err.field.as_deref(), Some("operations[2].amount"));
    assert!(err.message.starts_with("operation 2: "), "{}", err.message);
    assert_eq!(
        w.balance("alice"),
        100,
        "the first two operations are undone too"
    );

    // Holder counting sees the earlier operations of the same batch.
    let err = w.refuse_command(batch(vec![
        issue("bob", 1),
        issue("carol", 1),
        issue("dave", 1),
    ]));
    assert_eq!(
        (err.code, err.field.as_deref()),
        ("max_holders_reached", Some("operations[2].to"))
    );

    // An error without a field is named by its index alone.
    let err = w.refuse_command(batch(vec![Operation::Pause, Operation::Pause]));
    assert_eq!(
        (err.code, err.field.as_deref()),
        ("already_paused", Some("operations[1]"))
    );
    assert!(!w.token().paused);

    let err = w.refuse_command(batch(vec![issue("nobody", 1)]));
    assert_eq!(
        (err.code, err.field.as_deref()),
        ("investor_not_found", Some("operations[0].to"))
    );

    let err = w.refuse_command(batch(Vec::new()));
    assert_eq!(
        (err.kind, err.field.as_deref()),
        (ErrorKind::Invalid, Some("operations"))
    );
    let err = w.refuse_command(batch(vec![issue("alice", 1); MAX_BATCH + 1]));
    assert_eq!(err.field.as_deref(), Some("operations"));
    w.run(batch(vec![issue("alice", 1); MAX_BATCH]))
        .expect("a full batch is fine");
    assert_eq!(w.balance("alice"), 100 + MAX_BATCH as u128);
}

#[test]
fn an_independent_batch_applies_what_passes_and_reports_each_refusal() {
    let rules = Rules {
        max_holders: Some(3),
        ..Rules::default()
    };
    let mut w = World::new(10_000, rules);
    w.ok(issue("alice", 100));
    let version = w.token().version;
    let operations = vec![
        transfer("alice", "bob", 30),
        transfer("alice", "carol", 500),
        issue("nobody", 1),
        transfer("bob", "carol", 10),
        Operation::Pause,
        Operation::Pause,
    ];
    let (events, outcomes) = w
        .book
        .decide_batch(&TOKEN.into(), &operations, BatchMode::Independent, &w.ctx())
        .expect("an independent batch is decided operation by operation");
    let codes: Vec<Option<(&str, Option<&str>)>> = outcomes
        .iter()
        .map(|o| o.as_ref().map(|e| (e.code, e.field.as_deref())))
        .collect();
    assert_eq!(
        codes,
        [
            None,
            Some(("insufficient_balance", Some("amount"))),
            Some(("investor_not_found", Some("to"))),
            None,
            None,
            Some(("already_paused", None)),
        ],
        "each operation's own outcome, decided on what the ones before it left"
    );
    let names: Vec<_> = events.iter().map(|e| e.change.name()).collect();
    assert_eq!(names, ["transferred", "transferred", "paused"]);
    // Deciding changed nothing; applying the events does what the outcomes say.
    assert_eq!(w.token().version, version);
    for event in &events {
        w.book.apply(event);
    }
    assert_eq!(
        (w.balance("alice"), w.balance("bob"), w.balance("carol")),
        (70, 20, 10)
    );
    assert!(w.token().paused);
    assert_eq!(w.token().version, version + 3);

    // The size limit and an unknown token still refuse the whole batch.
    let err = w
        .book
        .decide_batch(&TOKEN.into(), &[], BatchMode::Independent, &w.ctx())
        .expect_err("an empty batch");
    assert_eq!(err.field.as_deref(), Some("operations"));
    let err = w
        .book
        .decide_batch(
            &"tok_none".into(),
            &operations,
            BatchMode::Independent,
            &w.ctx(),
        )
        .expect_err("no such token");
    assert_eq!(err.code, "token_not_found");
}

// Distributions and history.

fn distribution(id: &str, total: u128, record_date: Timestamp) -> DistributionSpec {
    DistributionSpec {
        id: id.into(),
        total: Amount(total),
        currency: eur(),
        record_date,
        memo: Some("Q1 rent".into()),
    }
}

#[test]
fn a_distribution_uses_balances_at_the_record_date() {
    let mut w = World::new(1_000, Rules::default());
    w.ok(issue("carol", 1));
    w.ok(issue("alice", 1));
    w.ok(issue("bob", 1));
    w.advance(DAY);
    w.ok(issue("alice", 97));
    w.ok(transfer("bob", "dave", 1));
    w.advance(DAY);
    let version = w.token().version;

    let events = w
        .run(w.distribute(distribution("div1", 100, T0)))
        .expect("distributed");
    let Change::DistributionPaid { allocations, .. } = &events[0].change else {
        panic!("a distribution event, not {:?}", events[0].change);
    };
    let parts: Vec<(&str, u128, u128)> = allocations
        .iter()
        .map(|a| (a.investor_id.as_str(), a.balance.0, a.amount.0))
        .collect();
    // Equal balances at T0 (inclusive); the unit left over goes to the smallest id.
    assert_eq!(
        parts,
        vec![("alice", 1, 34), ("bob", 1, 33), ("carol", 1, 33)]
    );
    assert!(w.token().distributions.contains("div1"));
    assert_eq!(w.token().version, version + 1);
    assert_eq!(w.balance("alice"), 98, "paying out moves no tokens");

    // At a later record date the later balances count.
    let events = w
        .run(w.distribute(distribution("div2", 1_000, T0 + Duration::days(1))))
        .expect("distributed");
    let Change::DistributionPaid { allocations, .. } = &events[0].change else {
        panic!("a distribution event");
    };
    let parts: Vec<(&str, u128)> = allocations
        .iter()
        .map(|a| (a.investor_id.as_str(), a.amount.0))
        .collect();
    assert_eq!(parts, vec![("alice", 980), ("carol", 10), ("dave", 10)]);
}

#[test]
fn a_distribution_is_paid_once_and_needs_holders_and_a_past_record_date() {
    let mut w = World::new(1_000, Rules::default());
    w.advance(3_600);
    w.ok(issue("alice", 10));
    w.run(w.distribute(distribution("div1", 100, w.now)))
        .expect("paid");
    let err = w.refuse_command(w.distribute(distribution("div1", 5, w.now - Duration::minutes(1))));
    assert_eq!(
        (err.kind, err.code),
        (ErrorKind::Conflict, "distribution_exists")
    );
    let err = w.refuse_command(w.distribute(distribution("div2", 100, T0)));
    assert_eq!(
        (err.code, err.field.as_deref()),
        ("no_holders", Some("record_date"))
    );
    let err =
        w.refuse_command(w.distribute(distribution("div2", 100, w.now + Duration::seconds(1))));
    assert_eq!(
        (err.kind, err.field.as_deref()),
        (ErrorKind::Invalid, Some("record_date"))
    );
    // Balances read before the record date cannot pay it: what happened in between is not in
    // them.
    let mut early = w.distribute(distribution("div2", 100, w.now));
    if let Command::Distribute {
        record_balances, ..
    } = &mut early
    {
        record_balances.taken_at = w.now - Duration::seconds(1);
    }
    let err = w.refuse_command(early);
    assert_eq!(
        (err.kind, err.field.as_deref()),
        (ErrorKind::Invalid, Some("record_date"))
    );
    let err = w.refuse_command(w.distribute(distribution("div2", 0, w.now)));
    assert_eq!(err.field.as_deref(), Some("total"));
    assert_eq!(w.token().distributions.len(), 1);
}

#[test]
fn balances_as_of_replays_the_history_up_to_an_instant() {
    let mut w = World::new(1_000, Rules::default());
    let t1 = T0;
    w.ok(issue("bob", 100));
    w.ok(issue("alice", 50));
    w.advance(3_600);
    let t2 = w.now;
    w.ok(transfer("bob", "carol", 100));
    w.ok(freeze_amount("alice", 10)); // no balance change
    w.advance(3_600);
    let t3 = w.now;
    w.ok(redeem("alice", 50 - 10 - 10));
    w.ok(forced("carol", "dave", 5));

    let at = |t: Timestamp| -> Vec<(String, u128)> {
        w.balances_as_of(TOKEN, t)
            .into_iter()
            .map(|(id, a)| (id.to_string(), a.0))
            .collect()
    };
    let owned = |v: &[(&str, u128)]| -> Vec<(String, u128)> {
        v.iter().map(|(id, a)| (id.to_string(), *a)).collect()
    };
    assert!(at(t1 - Duration::seconds(1)).is_empty());
    assert_eq!(
        at(t1),
        owned(&[("alice", 50), ("bob", 100)]),
        "sorted by id, inclusive of the instant"
    );
    assert_eq!(at(t2 - Duration::seconds(1)), at(t1));
    assert_eq!(
        at(t2),
        owned(&[("alice", 50), ("carol", 100)]),
        "a zero balance is left out"
    );
    assert_eq!(at(t3), owned(&[("alice", 20), ("carol", 95), ("dave", 5)]));
    assert_eq!(at(datetime!(2100-01-01 0:00 UTC)), at(t3));
    assert!(w.balances_as_of("unknown", t3).is_empty());
    let current: Vec<(String, u128)> = ["alice", "carol", "dave"]
        .iter()
        .map(|id| (id.to_string(), w.balance(id)))
        .collect();
    assert_eq!(at(w.now), current);
}

// Creating tokens.

#[test]
fn creating_a_token_needs_an_approved_asset_and_a_unique_symbol() {
    let mut w = World::empty();
    let create = |id: &str, asset: &str, symbol: &str| {
        Command::CreateToken(spec(id, asset, symbol, 1_000, Rules::default()))
    };

    let err = w.refuse_command(create("t1", "a1", "LOFT"));
    assert_eq!(
        (err.kind, err.code, err.field.as_deref()),
        (ErrorKind::Conflict, "asset_not_approved", Some("asset_id"))
    );
    w.run(Command::ObserveAsset {
        asset_id: "a1".into(),
        state: AssetState::Unavailable,
        sequence: 0,
    })
    .expect("observed");
    assert_eq!(
        w.refuse_command(create("t1", "a1", "LOFT")).code,
        "asset_not_approved"
    );

    for asset in ["a1", "a2", "a3"] {
        let events = w
            .run(Command::ObserveAsset {
                asset_id: asset.into(),
                state: AssetState::Approved,
                sequence: 0,
            })
            .expect("observed");
        assert_eq!(events.len(), 1);
    }
    let again = w
        .run(Command::ObserveAsset {
            asset_id: "a1".into(),
            state: AssetState::Approved,
            sequence: 0,
        })
        .expect("observed");
    assert!(
        again.is_empty(),
        "observing the same state again changes nothing"
    );

    let events = w.run(create("t1", "a1", "LOFT")).expect("created");
    assert_eq!(events[0].change.name(), "created");
    assert_eq!(w.book.asset_state("a1"), Some(AssetState::Tokenized));
    let token = w.book.token("t1").expect("the token");
    assert_eq!(
        (
            token.version,
            token.total_supply,
            token.holders,
            token.paused
        ),
        (1, Amount::ZERO, 0, false)
    );
    assert_eq!(token.created_at, T0);

    let err = w.refuse_command(create("t9", "a1", "OTHER"));
    assert_eq!(
        (err.code, err.field.as_deref()),
        ("asset_already_tokenized", Some("asset_id"))
    );
    let err = w.refuse_command(create("t2", "a2", "LOFT"));
    assert_eq!(
        (err.kind, err.code, err.field.as_deref()),
        (ErrorKind::Conflict, "symbol_taken", Some("symbol"))
    );
    let err = w.refuse_command(create("t1", "a2", "LOFT2"));
    assert_eq!(err.code, "token_exists");
    w.run(create("t2", "a2", "LOFT2"))
        .expect("another symbol on another asset");
    assert_eq!(
        w.book
            .tokens()
            .map(|t| t.spec.symbol.as_str())
            .collect::<Vec<_>>(),
        ["LOFT", "LOFT2"]
    );

    // The spec itself is validated.
    for (bad, field) in [
        (spec("t3", "a3", "lo", 1_000, Rules::default()), "symbol"),
        (spec("t3", "a3", "L", 1_000, Rules::default()), "symbol"),
        (spec("t3", "a3", "1LOFT", 1_000, Rules::default()), "symbol"),
        (spec("t3", "a3", "LOFT3", 0, Rules::default()), "max_supply"),
        (
            spec("t3", "a3", "LOFT3", MAX_SUPPLY.0 + 1, Rules::default()),
            "max_supply",
        ),
        (
            TokenSpec {
                decimals: 19,
                ..spec("t3", "a3", "LOFT3", 1_000, Rules::default())
            },
            "decimals",
        ),
        (
            TokenSpec {
                name: " ".into(),
                ..spec("t3", "a3", "LOFT3", 1_000, Rules::default())
            },
            "name",
        ),
    ] {
        let err = w.refuse_command(Command::CreateToken(bad));
        assert_eq!(
            (err.kind, err.field.as_deref()),
            (ErrorKind::Invalid, Some(field))
        );
    }
    w.run(Command::CreateToken(spec(
        "t3",
        "a3",
        "LOFT3",
        MAX_SUPPLY.0,
        Rules::default(),
    )))
    .expect("the largest supply is allowed");
}

#[test]
fn transfer_counters_saturate_instead_of_overflowing() {
    // The same tokens can go back and forth without limit: with a supply of 10^36 a few hundred
    // transfers in one day add up to more than a u128 holds.
    let mut w = World::new(MAX_SUPPLY.0, Rules::default());
    w.ok(issue("alice", MAX_SUPPLY.0));
    let rounds = u128::MAX / MAX_SUPPLY.0 + 1;
    for _ in 0..rounds {
        w.ok(transfer("alice", "bob", MAX_SUPPLY.0));
        w.ok(transfer("bob", "alice", MAX_SUPPLY.0));
    }
    assert_eq!(w.holding("alice").sent_today(w.now), Amount(u128::MAX));
    // A limit set afterwards still refuses cleanly.
    w.update_rules(|r| r.daily_transfer_limit = Some(MAX_SUPPLY));
    w.refused(transfer("alice", "bob", 1), "transfer_limit_exceeded");
    w.advance(DAY);
    w.ok(transfer("alice", "bob", 1));
}

#[test]
fn replaying_the_events_rebuilds_the_same_book() {
    let rules = Rules {
        lockup_seconds: 3_600,
        daily_transfer_limit: Some(Amount(500)),
        ..Rules::default()
    };
    let mut w = World::new(10_000, rules);
    w.ok(issue("alice", 1_000));
    w.ok(issue("bob", 300));
    w.advance(7_200);
    w.ok(transfer("alice", "carol", 200));
    w.ok(freeze_amount("carol", 50));
    w.ok(freeze("dave"));
    w.ok(forced("bob", "carol", 100));
    w.run(w.distribute(distribution("d1", 999, T0)))
        .expect("distributed");
    w.update_investor("bob", |p| p.accredited = false);
    w.update_rules(|r| r.max_holders = Some(10));
    assert!(w.op(transfer("alice", "dave", 1)).is_err());

    let json = serde_json::to_string(&w.log).expect("serialise");
    let log: Vec<Event> = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(log, w.log);
    let mut replayed = Book::default();
    let mut index = BTreeMap::new();
    for event in &log {
        replayed.apply(event);
        index.extend(replayed.take_index());
    }
    assert_eq!(index, w.index, "replaying writes the same index rows");
    assert_eq!(
        replayed.tokens().cloned().collect::<Vec<_>>(),
        w.book.tokens().cloned().collect::<Vec<_>>()
    );
    assert_eq!(
        replayed.investors().cloned().collect::<Vec<_>>(),
        w.book.investors().cloned().collect::<Vec<_>>()
    );
    assert_eq!(replayed.asset_state("asset1"), Some(AssetState::Tokenized));
    for t in [T0, T0 + Duration::seconds(7_200), w.now] {
        assert_eq!(
            balances_in(&replayed, &index, TOKEN, t),
            w.balances_as_of(TOKEN, t)
        );
    }
}

// Property tests.

/// How many investors the generated operations choose among.
const INVESTORS: usize = 6;
const PROP_MAX_SUPPLY: u128 = 1_000;

fn investor_id(i: usize) -> Id {
    format!("inv{i}").into()
}

#[derive(Debug, Clone)]
enum Op {
    Issue(usize, u128),
    Transfer(usize, usize, u128),
    Redeem(usize, u128),
    Forced(usize, usize, u128),
    Freeze(usize),
    Unfreeze(usize),
    FreezeAmount(usize, u128),
    UnfreezeAmount(usize, u128),
    Pause,
    Unpause,
    /// Hold number, from, to, amount, seconds to its deadline.
    PlaceHold(usize, usize, usize, u128, i64),
    PostHold(usize, Option<u128>),
    VoidHold(usize),
    /// Reverses the movement this many versions back (its record filled in from the index).
    Reverse(u64),
    /// An agent approves a transfer: from, to, amount.
    Approve(usize, usize, u128),
    /// The movement (an issuance, a transfer, a redemption, a forced transfer or a hold) made
    /// in a share class: 0 the default class, else `PROP_CLASSES[n - 1]`.
    InClass(usize, Box<Op>),
    /// An agent converts: investor, class left, class joined (as for `InClass`), amount.
    Convert(usize, usize, usize, u128),
}

/// The share classes of the property test's token: A has no rules of its own; B caps the
/// supply and each balance and is locked up for the first three days.
const PROP_CLASSES: [&str; 2] = ["A", "B"];

fn prop_class(n: usize) -> Option<Id> {
    n.checked_sub(1).map(|i| Id::from(PROP_CLASSES[i]))
}

fn hold_id(n: usize) -> Id {
    format!("h{n}").into()
}

impl Op {
    fn operation(&self) -> Operation {
        let a = |amount: &u128| Amount(*amount);
        match self {
            Op::Issue(to, amount) => Operation::Issue {
                class: None,
                to: investor_id(*to),
                amount: a(amount),
            },
            Op::Transfer(from, to, amount) => Operation::Transfer {
                class: None,
                from: investor_id(*from),
                to: investor_id(*to),
                amount: a(amount),
            },
            Op::Redeem(from, amount) => Operation::Redeem {
                class: None,
                from: investor_id(*from),
                amount: a(amount),
            },
            Op::Forced(from, to, amount) => Operation::ForcedTransfer {
                class: None,
                from: investor_id(*from),
                to: investor_id(*to),
                amount: a(amount),
                reason: "recovery".into(),
            },
            Op::Freeze(i) => Operation::Freeze {
                investor_id: investor_id(*i),
            },
            Op::Unfreeze(i) => Operation::Unfreeze {
                investor_id: investor_id(*i),
            },
            Op::FreezeAmount(i, amount) => Operation::FreezeAmount {
                investor_id: investor_id(*i),
                amount: a(amount),
            },
            Op::UnfreezeAmount(i, amount) => Operation::UnfreezeAmount {
                investor_id: investor_id(*i),
                amount: a(amount),
            },
            Op::Pause => Operation::Pause,
            Op::Unpause => Operation::Unpause,
            Op::PlaceHold(n, from, to, amount, seconds) => Operation::PlaceHold {
                class: None,
                hold_id: hold_id(*n),
                from: investor_id(*from),
                to: investor_id(*to),
                amount: a(amount),
                expires_at: T0 + Duration::seconds(*seconds),
                payment: None,
            },
            Op::PostHold(n, amount) => Operation::PostHold {
                hold_id: hold_id(*n),
                amount: amount.map(Amount),
            },
            Op::VoidHold(n) => Operation::VoidHold {
                hold_id: hold_id(*n),
                reason: "withdrawn".into(),
            },
            Op::Approve(from, to, amount) => Operation::ApproveTransfer {
                class: None,
                approval_id: format!("apr-{from}-{to}-{amount}").into(),
                from: investor_id(*from),
                to: investor_id(*to),
                amount: a(amount),
            },
            Op::Reverse(back) => Operation::Reverse {
                version: *back,
                reason: "corrected".into(),
                original: None,
            },
            Op::InClass(n, op) => {
                let mut operation = op.operation();
                match &mut operation {
                    Operation::Issue { class, .. }
                    | Operation::Transfer { class, .. }
                    | Operation::Redeem { class, .. }
                    | Operation::ForcedTransfer { class, .. }
                    | Operation::PlaceHold { class, .. } => *class = prop_class(*n),
                    _ => {}
                }
                operation
            }
            Op::Convert(i, from, to, amount) => Operation::Convert {
                investor_id: investor_id(*i),
                from_class: prop_class(*from),
                to_class: prop_class(*to),
                amount: a(amount),
                reason: "resolution".into(),
            },
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    One(Op),
    Batch(Vec<Op>, BatchMode),
    /// Turns the rule that transfers need an agent's approval on or off.
    RequireApproval(bool),
}

fn amount_strategy() -> impl Strategy<Value = u128> {
    prop_oneof![5 => 1u128..=80, 3 => 1u128..=400, 1 => 0u128..=2_000]
}

/// `to`, or the next investor if that is `from`: self-transfers are refused before any rule.
fn other(from: usize, to: usize) -> usize {
    if from == to { (to + 1) % INVESTORS } else { to }
}

/// An operation, a third of the movements in a named share class, and conversions.
fn op_strategy() -> impl Strategy<Value = Op> {
    let who = || prop_oneof![3 => 0..3usize, 1 => 3..INVESTORS];
    let class = || 0..=PROP_CLASSES.len();
    prop_oneof![
        12 => plain_op_strategy(),
        6 => (1..=PROP_CLASSES.len(), plain_op_strategy()).prop_map(|(n, op)| match op {
            Op::Issue(..) | Op::Transfer(..) | Op::Redeem(..) | Op::Forced(..) | Op::PlaceHold(..) => {
                Op::InClass(n, Box::new(op))
            }
            other => other,
        }),
        1 => (who(), class(), class(), amount_strategy())
            .prop_map(|(i, from, to, amount)| Op::Convert(i, from, if from == to { (to + 1) % (PROP_CLASSES.len() + 1) } else { to }, amount)),
    ]
}

fn plain_op_strategy() -> impl Strategy<Value = Op> {
    // Mostly the eligible investors, so that many commands pass and the caps are reached.
    let who = || prop_oneof![3 => 0..3usize, 1 => 3..INVESTORS];
    prop_oneof![
        12 => (who(), amount_strategy()).prop_map(|(to, amount)| Op::Issue(to, amount)),
        20 => (who(), who(), amount_strategy()).prop_map(|(from, to, amount)| Op::Transfer(from, other(from, to), amount)),
        4 => (who(), amount_strategy()).prop_map(|(from, amount)| Op::Redeem(from, amount)),
        4 => (who(), who(), amount_strategy()).prop_map(|(from, to, amount)| Op::Forced(from, other(from, to), amount)),
        1 => who().prop_map(Op::Freeze),
        6 => who().prop_map(Op::Unfreeze),
        3 => (who(), amount_strategy()).prop_map(|(i, amount)| Op::FreezeAmount(i, amount)),
        3 => (who(), amount_strategy()).prop_map(|(i, amount)| Op::UnfreezeAmount(i, amount)),
        1 => Just(Op::Pause),
        6 => Just(Op::Unpause),
        // Deadlines from T0: the clock moves on, so later holds are often placed expired.
        6 => (0..12usize, who(), who(), amount_strategy(), 60i64..=30 * DAY)
            .prop_map(|(n, from, to, amount, seconds)| Op::PlaceHold(n, from, other(from, to), amount, seconds)),
        4 => (0..12usize, prop::option::of(amount_strategy())).prop_map(|(n, amount)| Op::PostHold(n, amount)),
        2 => (0..12usize).prop_map(Op::VoidHold),
        3 => (1u64..=6).prop_map(Op::Reverse),
        4 => (who(), who(), prop::sample::select(vec![10u128, 20, 40])).prop_map(|(from, to, amount)| Op::Transfer(from, other(from, to), amount)),
        // Few amounts, so that some approvals match the transfers that follow.
        3 => (who(), who(), prop::sample::select(vec![10u128, 20, 40])).prop_map(|(from, to, amount)| Op::Approve(from, other(from, to), amount)),
    ]
}

/// Seconds to move the clock on, and what to do then.
fn step_strategy() -> impl Strategy<Value = (i64, Step)> {
    let advance = prop_oneof![3 => Just(0i64), 4 => 1i64..=3_600, 1 => 3_600i64..=2 * DAY];
    let step = prop_oneof![
        9 => op_strategy().prop_map(Step::One),
        1 => (prop::collection::vec(op_strategy(), 1..4), any::<bool>()).prop_map(|(ops, independent)| {
            Step::Batch(ops, if independent { BatchMode::Independent } else { BatchMode::AllOrNothing })
        }),
        1 => any::<bool>().prop_map(Step::RequireApproval),
    ];
    (advance, step)
}

/// A random investor: any country, any KYC state (some expiring during the run), accredited or not.
fn profile_strategy() -> impl Strategy<Value = InvestorProfile> {
    (
        prop::sample::select(vec!["DE", "FR", "CH", "US"]),
        0u8..5,
        any::<bool>(),
    )
        .prop_map(|(code, kyc, accredited)| {
            let (kyc_status, kyc_expires_on) = match kyc {
                0 => (KycStatus::Verified, Some(date!(2030 - 01 - 01))),
                1 => (KycStatus::Verified, Some(date!(2025 - 01 - 25))),
                2 => (KycStatus::Pending, None),
                3 => (KycStatus::Expired, Some(date!(2024 - 12 - 31))),
                _ => (KycStatus::Rejected, None),
            };
            InvestorProfile {
                kyc_status,
                kyc_expires_on,
                accredited,
                ..verified(code)
            }
        })
}

/// Every rule on: country lists, accreditation, holder and balance caps, lock-up and limits.
fn prop_rules() -> Rules {
    Rules {
        allowed_countries: Some(countries(&["DE", "FR", "CH"])),
        denied_countries: countries(&["CH"]),
        require_accreditation: true,
        max_holders: Some(3),
        max_balance: Some(Amount(500)),
        lockup_seconds: DAY as u64,
        daily_transfer_limit: Some(Amount(150)),
        monthly_transfer_limit: Some(Amount(600)),
        transfer_approval_required: false,
        min_transfer_by_country: [(country("FR"), Amount(15))].into(),
        max_holders_by_country: [(country("DE"), 2)].into(),
        agent_restrictions: Default::default(),
    }
}

/// The first three investors are eligible; the rest are as generated.
fn prop_world(random: &[InvestorProfile]) -> World {
    let mut w = World::token_only(PROP_MAX_SUPPLY, prop_rules());
    let eligible = [verified("DE"), verified("FR"), verified("DE")];
    for (i, profile) in eligible.iter().chain(random).enumerate() {
        w.register(investor_id(i).as_str(), profile.clone());
    }
    for (id, rules) in [
        ("A", ClassRules::default()),
        (
            "B",
            ClassRules {
                max_supply: Some(Amount(300)),
                max_balance: Some(Amount(200)),
                locked_until: Some(T0 + Duration::days(3)),
                ..ClassRules::default()
            },
        ),
    ] {
        w.ok(Operation::DefineClass {
            class: id.into(),
            name: format!("class {id}"),
            rules,
        });
    }
    w
}

fn check_invariants(w: &World) -> Result<(), TestCaseError> {
    let token = w.token();
    let rules = &token.rules;
    let mut sum: u128 = 0;
    let mut positive = 0u64;
    for (id, h) in &token.holdings {
        sum = sum
            .checked_add(h.balance.0)
            .ok_or_else(|| TestCaseError::fail("balances overflow"))?;
        prop_assert!(
            h.frozen_amount.0 + h.held.0 <= h.balance.0,
            "{id}: frozen {} + held {} > balance {}",
            h.frozen_amount,
            h.held,
            h.balance
        );
        let pending: u128 = token
            .holds
            .values()
            .filter(|r| r.hold.from == *id)
            .map(|r| r.hold.amount.0)
            .sum();
        prop_assert_eq!(
            h.held.0,
            pending,
            "{}: held is the sum of its pending holds",
            id
        );
        let locked: u128 = h.locks.iter().map(|(_, a)| a.0).sum();
        prop_assert!(
            locked <= h.balance.0,
            "{id}: locks {locked} > balance {}",
            h.balance
        );
        if !h.balance.is_zero() {
            positive += 1;
        }
        if let Some(max) = rules.max_balance {
            prop_assert!(
                h.balance <= max,
                "{id}: balance {} over the maximum {max}",
                h.balance
            );
        }
        if let Some(limit) = rules.daily_transfer_limit {
            prop_assert!(
                h.sent_today(w.now) <= limit,
                "{id}: sent today over the limit"
            );
        }
        if let Some(limit) = rules.monthly_transfer_limit {
            prop_assert!(
                h.sent_this_month(w.now) <= limit,
                "{id}: sent this month over the limit"
            );
        }
    }
    prop_assert_eq!(
        sum,
        token.total_supply.0,
        "total supply is the sum of the balances"
    );
    prop_assert!(token.total_supply <= token.spec.max_supply);
    prop_assert_eq!(
        token.holders,
        positive,
        "holders counts the positive balances"
    );
    if let Some(max) = rules.max_holders {
        prop_assert!(token.holders <= max);
    }
    check_classes(token)?;
    let mut current: Vec<(Id, Amount)> = token
        .holdings
        .iter()
        .filter(|(_, h)| !h.balance.is_zero())
        .map(|(id, h)| (id.clone(), h.balance))
        .collect();
    current.sort();
    prop_assert_eq!(
        w.balances_as_of(TOKEN, w.now),
        current,
        "the history agrees with the holdings"
    );
    Ok(())
}

/// Each class's supply is the sum of its holders' balances, within its caps; each holding's
/// classes are within its totals, and what a class holds on hold is its pending holds.
fn check_classes(token: &Token) -> Result<(), TestCaseError> {
    let mut classes: Vec<Option<Id>> = vec![None];
    classes.extend(token.classes.keys().cloned().map(Some));
    for class in &classes {
        let class = class.as_ref();
        let mut sum = 0u128;
        for (id, h) in &token.holdings {
            let p = h.position(class);
            sum += p.balance.0;
            prop_assert!(
                p.held <= p.balance,
                "{id}: class {class:?} holds more than it has"
            );
            let pending: u128 = token
                .holds
                .values()
                .filter(|r| r.hold.from == *id && r.hold.class.as_ref() == class)
                .map(|r| r.hold.amount.0)
                .sum();
            prop_assert_eq!(p.held.0, pending, "{}: class {:?} held", id, class);
            if let Some(max) = class.and_then(|c| token.classes[c].class.rules.max_balance) {
                prop_assert!(
                    p.balance <= max,
                    "{id}: class {class:?} over its maximum balance"
                );
            }
        }
        prop_assert_eq!(sum, token.class_supply(class).0, "class {:?} supply", class);
        if let Some(max) = class.and_then(|c| token.classes[c].class.rules.max_supply) {
            prop_assert!(sum <= max.0, "class {class:?} over its cap");
        }
    }
    let named: u128 = token.classes.values().map(|c| c.supply.0).sum();
    prop_assert!(
        named <= token.total_supply.0,
        "the named classes are within the supply"
    );
    Ok(())
}

/// Runs the plan, checking the invariants after every step; returns the world and the codes of
/// the refusals seen.
fn simulate(
    random: &[InvestorProfile],
    plan: &[(i64, Step)],
) -> Result<(World, BTreeMap<&'static str, usize>), TestCaseError> {
    let mut w = prop_world(random);
    let mut codes = BTreeMap::new();
    for (advance, step) in plan {
        w.advance(*advance);
        // What the service's clock expires before anything else is decided.
        for command in w.book.expired_holds(w.now) {
            let events = w.run(command).expect("due holds expire");
            let expiries = events
                .iter()
                .all(|e| matches!(e.change, Change::HoldExpired { .. }));
            prop_assert!(expiries, "an expiry only expires");
        }
        prop_assert!(w.token().holds.values().all(|r| r.hold.expires_at > w.now));
        // A reversal names a movement a few versions back, described by its index row as
        // the service reads it (none if that event moved nothing).
        let version = w.token().version;
        let resolve = |op: &Op| match op.operation() {
            Operation::Reverse {
                version: back,
                reason,
                ..
            } => {
                let version = version.saturating_sub(back - 1);
                let original = w
                    .index
                    .get(&keys::movement(TOKEN, version))
                    .map(|row| Movement::from_row(row).expect("a movement record"));
                Operation::Reverse {
                    version,
                    reason,
                    original,
                }
            }
            operation => operation,
        };
        let command = match step {
            Step::One(op) => Command::Operate {
                token_id: TOKEN.into(),
                operation: resolve(op),
            },
            Step::Batch(ops, mode) => Command::Batch {
                token_id: TOKEN.into(),
                operations: ops.iter().map(resolve).collect(),
                mode: *mode,
            },
            Step::RequireApproval(on) => Command::UpdateRules {
                token_id: TOKEN.into(),
                expected_version: version,
                rules: Rules {
                    transfer_approval_required: *on,
                    ..w.token().rules.clone()
                },
            },
        };
        let before = w.token().clone();
        let ctx = w.ctx();
        // An independent batch is never refused whole for a rule: each refusal is its
        // operation's outcome, counted like a single command's.
        let decided = match &command {
            Command::Batch {
                token_id,
                operations,
                mode: BatchMode::Independent,
            } => w
                .book
                .decide_batch(token_id, operations, BatchMode::Independent, &ctx)
                .map(|(events, outcomes)| {
                    for refusal in outcomes.iter().flatten() {
                        *codes.entry(refusal.code).or_default() += 1;
                    }
                    prop_assert_eq!(
                        events.len(),
                        outcomes.iter().filter(|o| o.is_none()).count()
                    );
                    Ok(events)
                }),
            _ => w.book.decide(&command, &ctx).map(|events| {
                prop_assert!(!events.is_empty());
                Ok(events)
            }),
        };
        match decided {
            Ok(events) => {
                let events = events?;
                for event in &events {
                    prop_assert_eq!(event.at, w.now);
                    prop_assert_eq!(event.change.token_id().map(Id::as_str), Some(TOKEN));
                    w.book.apply(event);
                }
                w.index.extend(w.book.take_index());
                w.log.extend(events.iter().cloned());
                prop_assert_eq!(w.token().version, before.version + events.len() as u64);
            }
            Err(err) => {
                prop_assert_eq!(w.token(), &before, "a refused command changes nothing");
                prop_assert!(
                    matches!(
                        err.kind,
                        ErrorKind::Refused | ErrorKind::Invalid | ErrorKind::Conflict
                    ) || err.code == "movement_not_found",
                    "unexpected {:?} {}",
                    err.kind,
                    err.code
                );
                if err.kind == ErrorKind::Refused {
                    prop_assert!(CHECK_ORDER.contains(&err.code), "unknown code {}", err.code);
                }
                *codes.entry(err.code).or_default() += 1;
            }
        }
        check_invariants(&w)?;
    }
    Ok((w, codes))
}

fn prop_config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        rng_seed: RngSeed::Fixed(0x11be_7a11),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn plan_strategy() -> impl Strategy<Value = (Vec<InvestorProfile>, Vec<(i64, Step)>)> {
    (
        prop::collection::vec(profile_strategy(), INVESTORS - 3),
        prop::collection::vec(step_strategy(), 200),
    )
}

proptest! {
    #![proptest_config(prop_config())]

    #[test]
    fn invariants_hold_after_every_step((random, plan) in plan_strategy()) {
        let (w, _) = simulate(&random, &plan)?;
        let movements = w.log.iter().filter(|e| e.change.balance_deltas().next().is_some()).count();
        prop_assert!(movements > 0, "the plan moved some tokens");
    }

    #[test]
    fn replaying_the_applied_events_rebuilds_equal_tokens((random, plan) in plan_strategy()) {
        let (w, _) = simulate(&random, &plan)?;
        let mut replayed = Book::default();
        let mut index = BTreeMap::new();
        for event in &w.log {
            replayed.apply(event);
            index.extend(replayed.take_index());
        }
        prop_assert_eq!(replayed.token(TOKEN), w.book.token(TOKEN));
        prop_assert_eq!(
            replayed.investors().cloned().collect::<Vec<_>>(),
            w.book.investors().cloned().collect::<Vec<_>>()
        );
        for event in w.log.iter().step_by(17) {
            prop_assert_eq!(balances_in(&replayed, &index, TOKEN, event.at), w.balances_as_of(TOKEN, event.at));
        }
    }
}

/// The generator is not vacuous: over a fixed set of plans, every compliance code comes up.
#[test]
fn generated_plans_reach_every_compliance_code() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::new(prop_config());
    let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut applied = 0;
    let mut reversed = 0;
    let mut in_classes = 0;
    let mut converted = 0;
    for _ in 0..32 {
        let (random, plan) = plan_strategy()
            .new_tree(&mut runner)
            .expect("a plan")
            .current();
        let (w, codes) = simulate(&random, &plan).expect("the invariants hold");
        applied += w.log.len();
        reversed += w
            .log
            .iter()
            .filter(|e| matches!(e.change, Change::Reversed { .. }))
            .count();
        in_classes += w
            .log
            .iter()
            .filter(|e| {
                matches!(
                    &e.change,
                    Change::Issued { class: Some(_), .. }
                        | Change::Transferred { class: Some(_), .. }
                        | Change::Redeemed { class: Some(_), .. }
                        | Change::HoldPosted { class: Some(_), .. }
                )
            })
            .count();
        converted += w
            .log
            .iter()
            .filter(|e| matches!(e.change, Change::Converted { .. }))
            .count();
        for (code, n) in codes {
            *seen.entry(code).or_default() += n;
        }
    }
    let missing: Vec<&str> = CHECK_ORDER
        .iter()
        .copied()
        .filter(|c| !seen.contains_key(c))
        .collect();
    assert!(
        missing.is_empty(),
        "never refused with {missing:?}; seen {seen:?}"
    );
    assert!(
        reversed > 32 && seen.contains_key("already_reversed"),
        "reversals applied ({reversed}) and refused as repeated: {seen:?}"
    );
    assert!(
        in_classes > 32 && converted > 32,
        "movements in classes ({in_classes}) and conversions ({converted}) applied"
    );
    assert!(
        applied > 32 * 40,
        "plenty of commands pass: {applied}; refused {seen:?}"
    );
}

#[test]
fn older_news_of_an_asset_never_overrides_newer() {
    let mut w = World::empty();
    let observe = |w: &mut World, state: AssetState, sequence: u64| {
        w.run(Command::ObserveAsset {
            asset_id: "a9".into(),
            state,
            sequence,
        })
        .expect("observed")
        .len()
    };
    // The asset's stream: 3 approved, 4 tokenized, 5 suspended, 6 reactivated (tokenized).
    assert_eq!(observe(&mut w, AssetState::Approved, 3), 1);
    assert_eq!(observe(&mut w, AssetState::Tokenized, 4), 1);
    assert_eq!(observe(&mut w, AssetState::Suspended, 5), 1);
    assert_eq!(observe(&mut w, AssetState::Tokenized, 6), 1);
    // A relay publishes its backlog again: each older event changes nothing.
    for (state, sequence) in [
        (AssetState::Approved, 3),
        (AssetState::Tokenized, 4),
        (AssetState::Suspended, 5),
        (AssetState::Tokenized, 6),
    ] {
        assert_eq!(
            observe(&mut w, state, sequence),
            0,
            "{state:?} at {sequence}"
        );
        assert_eq!(w.book.asset_state("a9"), Some(AssetState::Tokenized));
    }
    // Newer news still counts, and the position survives a replay of the log.
    assert_eq!(observe(&mut w, AssetState::Retired, 7), 1);
    let mut replayed = Book::default();
    for event in &w.log {
        replayed.apply(event);
    }
    assert_eq!(replayed.asset_state("a9"), Some(AssetState::Retired));
    let stale = Command::ObserveAsset {
        asset_id: "a9".into(),
        state: AssetState::Suspended,
        sequence: 5,
    };
    assert_eq!(replayed.decide(&stale, &w.ctx()).expect("decided").len(), 0);
}

#[test]
fn holdings_are_read_in_investor_order_and_keep_it_through_a_snapshot() {
    let mut holdings = Holdings::default();
    for (investor, balance) in [("inv_c", 3), ("inv_a", 1), ("inv_d", 4), ("inv_b", 2)] {
        holdings.entry(&Id::from(investor)).balance = Amount(balance);
    }
    // An existing holding is not added twice.
    holdings.entry(&Id::from("inv_a")).balance = Amount(10);
    let page = |h: &Holdings, after: Option<&str>| -> Vec<(String, u128)> {
        h.ordered_after(after)
            .map(|(id, h)| (id.to_string(), h.balance.0))
            .collect()
    };
    let all = page(&holdings, None);
    assert_eq!(
        all,
        [("inv_a", 10), ("inv_b", 2), ("inv_c", 3), ("inv_d", 4)].map(|(id, b)| (id.to_owned(), b))
    );
    assert_eq!(page(&holdings, Some("inv_b")), all[2..]);
    assert_eq!(page(&holdings, Some("inv_bb")), all[2..]);
    assert!(page(&holdings, Some("inv_d")).is_empty());
    assert_eq!(holdings.len(), 4);
    // Stored as the map alone; the order is rebuilt when read back.
    let stored = serde_json::to_value(&holdings).expect("encoded");
    assert!(stored.is_object(), "a map: {stored}");
    let back: Holdings = serde_json::from_value(stored).expect("decoded");
    assert_eq!(page(&back, None), all);
    assert_eq!(back, holdings);
}
