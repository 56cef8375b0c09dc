//! Domain transfers per second on one core, every compliance rule on.

use std::time::Instant;

use libertum_domain::{
    Amount, Country, Id,
    token::{
        AssetState, Book, Command, Context, InvestorProfile, KycStatus, Operation, Rules, TokenSpec,
    },
};
use time::macros::datetime;

const INVESTORS: usize = 1_000;

fn apply(book: &mut Book, command: &Command, ctx: &Context) {
    let events = book
        .decide(command, ctx)
        .expect("set-up commands are valid");
    for event in &events {
        book.apply(event);
    }
}

/// Returns (transfers applied, seconds).
pub fn run(transfers: usize) -> (usize, f64) {
    let mut book = Book::default();
    let start = datetime!(2026-01-01 00:00 UTC);
    let ctx = Context {
        now: start,
        actor: Id::from("bench"),
    };
    let token = Id::from("tok_bench");
    let country = |c: &str| c.parse::<Country>().expect("country");
    apply(
        &mut book,
        &Command::ObserveAsset {
            asset_id: Id::from("ast_bench"),
            state: AssetState::Approved,
            sequence: 0,
        },
        &ctx,
    );
    let rules = Rules {
        allowed_countries: Some(
            ["DE", "FR", "NL", "ES", "IT"]
                .iter()
                .map(|c| country(c))
                .collect(),
        ),
        denied_countries: ["US", "KP"].iter().map(|c| country(c)).collect(),
        require_accreditation: true,
        max_holders: Some(INVESTORS as u64 + 10),
        max_balance: Some(Amount(10_000_000_000)),
        lockup_seconds: 3_600,
        daily_transfer_limit: Some(Amount(1_000_000_000)),
        monthly_transfer_limit: Some(Amount(10_000_000_000)),
        // Checked on every movement to a new holder (a map lookup); the country caps are not
        // set: they count the holders of the capped country when one joins.
        min_transfer_by_country: [(country("DE"), Amount(1))].into(),
        ..Rules::default()
    };
    let spec = TokenSpec {
        id: token.clone(),
        asset_id: Id::from("ast_bench"),
        symbol: "BENCH".into(),
        name: "Bench".into(),
        decimals: 0,
        max_supply: Amount(1_000_000_000_000),
        unit_price: Amount(100),
        currency: "EUR".parse().expect("currency"),
        rules,
    };
    apply(&mut book, &Command::CreateToken(spec), &ctx);
    let ids: Vec<Id> = (0..INVESTORS)
        .map(|i| Id::from(format!("inv_{i:05}")))
        .collect();
    for id in &ids {
        let profile = InvestorProfile {
            identity_ref: format!("idp|{id}"),
            country: country("DE"),
            kyc_status: KycStatus::Verified,
            kyc_expires_on: Some(time::macros::date!(2099 - 12 - 31)),
            accredited: true,
            wallet: None,
        };
        apply(
            &mut book,
            &Command::RegisterInvestor {
                id: id.clone(),
                profile,
            },
            &ctx,
        );
        apply(
            &mut book,
            &Command::Operate {
                token_id: token.clone(),
                operation: Operation::Issue {
                    class: None,
                    to: id.clone(),
                    amount: Amount(1_000_000),
                },
            },
            &ctx,
        );
    }
    // After the lock-up, so every rule is checked and passes.
    let ctx = Context {
        now: start + time::Duration::hours(2),
        actor: Id::from("bench"),
    };
    let commands: Vec<Command> = {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % INVESTORS as u64) as usize
        };
        (0..4_096)
            .map(|_| {
                let (a, mut b) = (next(), next());
                if a == b {
                    b = (b + 1) % INVESTORS;
                }
                Command::Operate {
                    token_id: token.clone(),
                    operation: Operation::Transfer {
                        class: None,
                        from: ids[a].clone(),
                        to: ids[b].clone(),
                        amount: Amount(1),
                    },
                }
            })
            .collect()
    };
    let started = Instant::now();
    let mut applied = 0;
    for i in 0..transfers {
        let command = &commands[i % commands.len()];
        if let Ok(events) = book.decide(command, &ctx) {
            for event in &events {
                book.apply(event);
            }
            // As the engine does with every group: the rows go to the store.
            drop(book.take_index());
            applied += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let t = book.token(&token).expect("token");
    let sum: u128 = t.holdings.values().map(|h| h.balance.0).sum();
    assert_eq!(
        sum, t.total_supply.0,
        "supply = sum of balances after the run"
    );
    (applied, seconds)
}
