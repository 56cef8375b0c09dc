use time::macros::{date, datetime};

use super::*;
use crate::ErrorKind;

const T0: Timestamp = datetime!(2025-03-10 09:00 UTC);

fn ctx_at(now: Timestamp) -> Context {
    Context {
        now,
        actor: "officer@libertum".into(),
    }
}

fn ctx() -> Context {
    ctx_at(T0)
}

fn country(code: &str) -> Country {
    code.parse().expect("a valid country code")
}

fn make_profile(
    name: &str,
    kind: &str,
    city: &str,
    owner: &str,
    description: Option<&str>,
) -> Profile {
    profile(
        name,
        kind,
        Location {
            address: "1 Main Street".into(),
            city: city.into(),
            postal_code: Some("10115".into()),
            country: country("DE"),
        },
        owner,
        description,
    )
    .expect("a valid profile")
}

fn sample_profile() -> Profile {
    make_profile(
        "Berlin Loft",
        "real_estate",
        "Berlin",
        "Loft SPV GmbH",
        Some("A loft in Mitte"),
    )
}

fn good_document() -> DocumentForCreate {
    DocumentForCreate {
        title: "Title deed".into(),
        kind: "title_deed".into(),
        sha256: "ab".repeat(32),
        size_bytes: 2048,
        media_type: "application/pdf".into(),
    }
}

fn eur() -> Currency {
    "EUR".parse().expect("a valid currency")
}

/// A registry together with every event it has applied, so a replay can be checked.
#[derive(Default)]
struct World {
    registry: Registry,
    log: Vec<Event>,
}

impl World {
    fn run_at(&mut self, command: Command, ctx: &Context) -> Result<Vec<Event>> {
        let events = self.registry.decide(&command, ctx)?;
        for event in &events {
            self.registry.apply(event);
        }
        self.log.extend(events.iter().cloned());
        Ok(events)
    }

    fn run(&mut self, command: Command) -> Result<Vec<Event>> {
        self.run_at(command, &ctx())
    }

    fn register(&mut self, id: &str, profile: Profile) {
        let events = self
            .run(Command::Register {
                id: id.into(),
                profile,
            })
            .expect("registration succeeds");
        assert_eq!(events.len(), 1);
    }

    fn transition(&mut self, id: &str, action: Action, reason: Option<&str>) -> Result<Vec<Event>> {
        self.run(Command::Transition {
            id: id.into(),
            action,
            reason: reason.map(str::to_owned),
        })
    }

    fn asset(&self, id: &str) -> &Asset {
        self.registry.get(id).expect("the asset exists")
    }

    /// Runs `command` expecting a refusal; checks that the registry did not change.
    fn refuse(&mut self, command: Command) -> Error {
        let before: Vec<Asset> = self.all();
        let log_len = self.log.len();
        let err = self.run(command).expect_err("the command must be refused");
        assert_eq!(self.all(), before, "a refused command changes nothing");
        assert_eq!(self.log.len(), log_len);
        err
    }

    fn all(&self) -> Vec<Asset> {
        let (page, next) = self.registry.list(&Filter::default(), 0, usize::MAX);
        assert_eq!(next, None);
        page.into_iter().cloned().collect()
    }

    /// Moves a fresh draft asset to `status` along legal moves.
    fn drive_to(&mut self, id: &str, status: Status) {
        self.register(id, sample_profile());
        let path: &[(Action, Option<&str>)] = match status {
            Status::Draft => &[],
            Status::Submitted => &[(Action::Submit, None)],
            Status::Approved => &[(Action::Submit, None), (Action::Approve, None)],
            Status::Rejected => &[
                (Action::Submit, None),
                (Action::Reject, Some("incomplete file")),
            ],
            Status::Tokenized => &[(Action::Submit, None), (Action::Approve, None)],
            Status::Suspended => &[(Action::Submit, None), (Action::Approve, None)],
            Status::Retired => &[
                (Action::Submit, None),
                (Action::Reject, Some("incomplete file")),
                (Action::Retire, Some("sold")),
            ],
        };
        for (action, reason) in path {
            self.transition(id, *action, *reason).expect("a legal move");
        }
        if matches!(status, Status::Tokenized | Status::Suspended) {
            self.run(Command::MarkTokenized {
                id: id.into(),
                token_id: format!("tok_{id}").into(),
            })
            .expect("an approved asset can be tokenized");
        }
        if status == Status::Suspended {
            self.transition(id, Action::Suspend, Some("audit"))
                .expect("a legal move");
        }
        assert_eq!(self.asset(id).status, status);
    }
}

const ALL_STATUSES: [Status; 7] = [
    Status::Draft,
    Status::Submitted,
    Status::Approved,
    Status::Rejected,
    Status::Tokenized,
    Status::Suspended,
    Status::Retired,
];

const ALL_ACTIONS: [Action; 7] = [
    Action::Submit,
    Action::Approve,
    Action::Reject,
    Action::Reopen,
    Action::Suspend,
    Action::Reactivate,
    Action::Retire,
];

fn reason_for(action: Action) -> Option<String> {
    action.needs_reason().then(|| "because".to_owned())
}

// Registration and editing.

#[test]
fn registering_creates_a_draft_at_version_one() {
    let mut w = World::default();
    assert!(w.registry.is_empty());
    let events = w
        .run(Command::Register {
            id: "a1".into(),
            profile: sample_profile(),
        })
        .expect("registered");
    assert_eq!(events[0].name(), "registered");
    assert_eq!(events[0].asset_id.as_str(), "a1");
    assert_eq!(events[0].at, T0);
    assert_eq!(events[0].actor, "officer@libertum");

    let asset = w.asset("a1");
    assert_eq!(asset.status, Status::Draft);
    assert_eq!(asset.version, 1);
    assert_eq!(asset.seq, 1);
    assert_eq!(asset.profile, sample_profile());
    assert_eq!(asset.token_id, None);
    assert!(asset.documents.is_empty() && asset.valuations.is_empty() && asset.history.is_empty());
    assert_eq!((asset.created_at, asset.updated_at), (T0, T0));

    w.register("a2", sample_profile());
    assert_eq!(w.asset("a2").seq, 2);
    assert_eq!(w.registry.len(), 2);
}

#[test]
fn registering_an_existing_id_is_a_conflict() {
    let mut w = World::default();
    w.register("a1", sample_profile());
    let err = w.refuse(Command::Register {
        id: "a1".into(),
        profile: make_profile("Other", "art", "Paris", "Someone", None),
    });
    assert_eq!((err.kind, err.code), (ErrorKind::Conflict, "asset_exists"));
    assert_eq!(w.asset("a1").profile.name, "Berlin Loft");
}

#[test]
fn profiles_are_trimmed_and_validated() {
    let p = make_profile("  Loft  ", "real_estate", " Berlin ", " SPV ", Some("   "));
    assert_eq!(
        (
            p.name.as_str(),
            p.location.city.as_str(),
            p.legal_owner.as_str()
        ),
        ("Loft", "Berlin", "SPV")
    );
    assert_eq!(p.description, None, "a blank description is absent");

    let location = || Location {
        address: "1 Main Street".into(),
        city: "Berlin".into(),
        postal_code: None,
        country: country("DE"),
    };
    for bad_kind in ["", "Real_estate", "1estate", "real-estate", &"a".repeat(41)] {
        let err = profile("Loft", bad_kind, location(), "SPV", None).expect_err("a bad kind");
        assert_eq!(err.field.as_deref(), Some("kind"), "{bad_kind:?}");
        assert_eq!(err.code, "invalid_field");
    }
    let err = profile("   ", "real_estate", location(), "SPV", None).expect_err("a blank name");
    assert_eq!(err.field.as_deref(), Some("name"));
    let err = profile(
        "Loft",
        "real_estate",
        Location {
            city: String::new(),
            ..location()
        },
        "SPV",
        None,
    )
    .expect_err("a blank city");
    assert_eq!(err.field.as_deref(), Some("location.city"));
    let err = profile(
        "Loft",
        "real_estate",
        location(),
        "SPV",
        Some(&"x".repeat(4_001)),
    )
    .expect_err("too long");
    assert_eq!(err.field.as_deref(), Some("description"));
}

#[test]
fn a_draft_is_edited_with_the_current_version() {
    let mut w = World::default();
    w.register("a1", sample_profile());
    let edited = make_profile(
        "Berlin Loft II",
        "real_estate",
        "Berlin",
        "Loft SPV GmbH",
        None,
    );
    let later = ctx_at(datetime!(2025-03-11 10:00 UTC));
    let events = w
        .run_at(
            Command::Update {
                id: "a1".into(),
                expected_version: 1,
                profile: edited.clone(),
            },
            &later,
        )
        .expect("edited");
    assert_eq!(events[0].name(), "updated");
    let asset = w.asset("a1");
    assert_eq!(asset.profile, edited);
    assert_eq!(asset.version, 2);
    assert_eq!(asset.updated_at, later.now);
    assert_eq!(asset.created_at, T0);

    // The same version again is now stale.
    let err = w.refuse(Command::Update {
        id: "a1".into(),
        expected_version: 1,
        profile: sample_profile(),
    });
    assert_eq!((err.kind, err.code), (ErrorKind::Stale, "version_mismatch"));
    assert_eq!(w.asset("a1").profile, edited);

    // A version from the future is stale too.
    let err = w.refuse(Command::Update {
        id: "a1".into(),
        expected_version: 3,
        profile: sample_profile(),
    });
    assert_eq!(err.code, "version_mismatch");
}

#[test]
fn only_a_draft_can_be_edited() {
    let mut w = World::default();
    w.register("a1", sample_profile());
    w.transition("a1", Action::Submit, None).expect("submitted");
    let version = w.asset("a1").version;
    assert_eq!(version, 2);
    let err = w.refuse(Command::Update {
        id: "a1".into(),
        expected_version: version,
        profile: make_profile("Changed", "art", "Paris", "Other", None),
    });
    assert_eq!(
        (err.kind, err.code),
        (ErrorKind::Conflict, "asset_not_draft")
    );

    // Once reopened after a rejection, it can be edited again.
    w.transition("a1", Action::Reject, Some("missing deed"))
        .expect("rejected");
    w.transition("a1", Action::Reopen, None).expect("reopened");
    let version = w.asset("a1").version;
    w.run(Command::Update {
        id: "a1".into(),
        expected_version: version,
        profile: make_profile("Changed", "art", "Paris", "Other", None),
    })
    .expect("a reopened draft is editable");
    assert_eq!(w.asset("a1").profile.name, "Changed");
    assert_eq!(w.asset("a1").version, version + 1);
}

#[test]
fn commands_on_an_unknown_asset_are_not_found() {
    let mut w = World::default();
    let commands = [
        Command::Update {
            id: "ghost".into(),
            expected_version: 1,
            profile: sample_profile(),
        },
        Command::AddDocument {
            id: "ghost".into(),
            document_id: "d1".into(),
            document: good_document(),
        },
        Command::AddValuation {
            id: "ghost".into(),
            valuation: ValuationForCreate {
                amount: Amount(1),
                currency: eur(),
                effective_date: date!(2025 - 01 - 01),
                appraiser: "Appraiser".into(),
            },
        },
        Command::Transition {
            id: "ghost".into(),
            action: Action::Submit,
            reason: None,
        },
        Command::MarkTokenized {
            id: "ghost".into(),
            token_id: "t".into(),
        },
    ];
    for command in commands {
        let err = w.refuse(command);
        assert_eq!(
            (err.kind, err.code),
            (ErrorKind::NotFound, "asset_not_found")
        );
    }
    assert!(w.registry.get("ghost").is_none());
}

// Documents.

#[test]
fn a_valid_document_is_added_to_a_draft() {
    let mut w = World::default();
    w.register("a1", sample_profile());
    let later = ctx_at(datetime!(2025-03-12 08:30 UTC));
    let events = w
        .run_at(
            Command::AddDocument {
                id: "a1".into(),
                document_id: "doc1".into(),
                document: DocumentForCreate {
                    title: "  Title deed  ".into(),
                    media_type:
                        "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
                            .into(),
                    ..good_document()
                },
            },
            &later,
        )
        .expect("added");
    assert_eq!(events[0].name(), "document_added");
    let asset = w.asset("a1");
    assert_eq!(asset.documents.len(), 1);
    let doc = &asset.documents[0];
    assert_eq!(doc.id.as_str(), "doc1");
    assert_eq!(doc.title, "Title deed", "the title is trimmed");
    assert_eq!(doc.kind, "title_deed");
    assert_eq!(doc.sha256, "ab".repeat(32));
    assert_eq!(doc.size_bytes, 2048);
    assert_eq!(doc.added_at, later.now);
    assert_eq!(doc.added_by, "officer@libertum");
    assert_eq!(asset.version, 2);
}

#[test]
fn a_document_needs_a_lower_case_hex_sha256() {
    let mut w = World::default();
    w.register("a1", sample_profile());
    let bad_hashes = [
        String::new(),
        "a".repeat(63),
        "a".repeat(65),
        "AB".repeat(32),
        format!("{}g", "a".repeat(63)),
        format!("{} ", "a".repeat(63)),
    ];
    for sha256 in bad_hashes {
        let err = w.refuse(Command::AddDocument {
            id: "a1".into(),
            document_id: "d".into(),
            document: DocumentForCreate {
                sha256: sha256.clone(),
                ..good_document()
            },
        });
        assert_eq!(
            (err.kind, err.code),
            (ErrorKind::Invalid, "invalid_field"),
            "{sha256:?}"
        );
        assert_eq!(err.field.as_deref(), Some("sha256"), "{sha256:?}");
    }
    let digits_and_letters = "0123456789abcdef".repeat(4);
    w.run(Command::AddDocument {
        id: "a1".into(),
        document_id: "d".into(),
        document: DocumentForCreate {
            sha256: digits_and_letters.clone(),
            ..good_document()
        },
    })
    .expect("every lower-case hex digit is accepted");
    assert_eq!(w.asset("a1").documents[0].sha256, digits_and_letters);
}

#[test]
fn a_document_needs_a_media_type_and_a_sane_size() {
    let mut w = World::default();
    w.register("a1", sample_profile());
    for media_type in [
        "",
        "pdf",
        "application/",
        "/pdf",
        "application/pdf; charset=x",
        "image/pn g",
        &format!("a/{}", "b".repeat(99)),
    ] {
        let err = w.refuse(Command::AddDocument {
            id: "a1".into(),
            document_id: "d".into(),
            document: DocumentForCreate {
                media_type: media_type.into(),
                ..good_document()
            },
        });
        assert_eq!(err.field.as_deref(), Some("media_type"), "{media_type:?}");
        assert_eq!(err.kind, ErrorKind::Invalid);
    }
    for size_bytes in [0, MAX_FILE_SIZE + 1] {
        let err = w.refuse(Command::AddDocument {
            id: "a1".into(),
            document_id: "d".into(),
            document: DocumentForCreate {
                size_bytes,
                ..good_document()
            },
        });
        assert_eq!(err.field.as_deref(), Some("size_bytes"));
    }
    let err = w.refuse(Command::AddDocument {
        id: "a1".into(),
        document_id: "d".into(),
        document: DocumentForCreate {
            kind: "Title Deed".into(),
            ..good_document()
        },
    });
    assert_eq!(err.field.as_deref(), Some("kind"));
    for media_type in ["image/svg+xml", "application/pdf", "text/x-markdown_v1.2"] {
        w.run(Command::AddDocument {
            id: "a1".into(),
            document_id: media_type.into(),
            document: DocumentForCreate {
                media_type: media_type.into(),
                size_bytes: MAX_FILE_SIZE,
                ..good_document()
            },
        })
        .expect("a valid media type");
    }
    assert_eq!(w.asset("a1").documents.len(), 3);
}

#[test]
fn documents_are_only_added_to_drafts_and_are_bounded() {
    let mut w = World::default();
    w.drive_to("sub", Status::Submitted);
    let err = w.refuse(Command::AddDocument {
        id: "sub".into(),
        document_id: "d".into(),
        document: good_document(),
    });
    assert_eq!(
        (err.kind, err.code),
        (ErrorKind::Conflict, "asset_not_draft")
    );

    w.register("full", sample_profile());
    for i in 0..MAX_DOCUMENTS {
        w.run(Command::AddDocument {
            id: "full".into(),
            document_id: format!("d{i}").into(),
            document: good_document(),
        })
        .expect("below the bound");
    }
    let err = w.refuse(Command::AddDocument {
        id: "full".into(),
        document_id: "one_more".into(),
        document: good_document(),
    });
    assert_eq!(err.code, "too_many_documents");
    assert_eq!(w.asset("full").documents.len(), MAX_DOCUMENTS);
}

// Valuations.

fn valuation(amount: u128, effective_date: Date) -> ValuationForCreate {
    ValuationForCreate {
        amount: Amount(amount),
        currency: eur(),
        effective_date,
        appraiser: " Knight Frank ".into(),
    }
}

#[test]
fn valuations_are_appended_in_order() {
    let mut w = World::default();
    w.register("a1", sample_profile());
    let first = date!(2024 - 12 - 31);
    let second = date!(2024 - 06 - 30);
    w.run(Command::AddValuation {
        id: "a1".into(),
        valuation: valuation(50_000_000, first),
    })
    .expect("first valuation");
    let later = ctx_at(datetime!(2025-03-11 09:00 UTC));
    let events = w
        .run_at(
            Command::AddValuation {
                id: "a1".into(),
                valuation: valuation(48_000_000, second),
            },
            &later,
        )
        .expect("an older effective date is still appended");
    assert_eq!(events[0].name(), "valuation_added");
    let asset = w.asset("a1");
    let recorded: Vec<_> = asset
        .valuations
        .iter()
        .map(|v| (v.amount, v.effective_date, v.recorded_at))
        .collect();
    assert_eq!(
        recorded,
        vec![
            (Amount(50_000_000), first, T0),
            (Amount(48_000_000), second, later.now)
        ],
        "append-only, in recording order, nothing replaced or sorted"
    );
    assert_eq!(asset.valuations[0].appraiser, "Knight Frank");
    assert_eq!(asset.valuations[0].recorded_by, "officer@libertum");
    assert_eq!(asset.valuations[0].currency, eur());
    assert_eq!(asset.version, 3);
}

#[test]
fn a_valuation_cannot_be_dated_in_the_future_or_be_zero() {
    let mut w = World::default();
    w.register("a1", sample_profile());
    let err = w.refuse(Command::AddValuation {
        id: "a1".into(),
        valuation: valuation(1, date!(2025 - 03 - 11)),
    });
    assert_eq!(
        (err.kind, err.field.as_deref()),
        (ErrorKind::Invalid, Some("effective_date"))
    );
    let err = w.refuse(Command::AddValuation {
        id: "a1".into(),
        valuation: valuation(0, date!(2025 - 03 - 01)),
    });
    assert_eq!(err.field.as_deref(), Some("amount"));
    let err = w.refuse(Command::AddValuation {
        id: "a1".into(),
        valuation: ValuationForCreate {
            appraiser: "  ".into(),
            ..valuation(1, date!(2025 - 03 - 01))
        },
    });
    assert_eq!(err.field.as_deref(), Some("appraiser"));
    // Today is not in the future.
    w.run(Command::AddValuation {
        id: "a1".into(),
        valuation: valuation(1, T0.date()),
    })
    .expect("a valuation effective today");
    assert_eq!(w.asset("a1").valuations.len(), 1);
}

#[test]
fn valuations_are_taken_in_any_status_but_retired() {
    let mut w = World::default();
    for (i, status) in ALL_STATUSES.into_iter().enumerate() {
        let id = format!("a{i}");
        w.drive_to(&id, status);
        let result = w.run(Command::AddValuation {
            id: id.as_str().into(),
            valuation: valuation(10, date!(2025 - 01 - 01)),
        });
        if status == Status::Retired {
            let err = result.expect_err("a retired asset takes no valuations");
            assert_eq!((err.kind, err.code), (ErrorKind::Conflict, "asset_retired"));
            assert!(w.asset(&id).valuations.is_empty());
        } else {
            result.expect("valuation accepted");
            assert_eq!(w.asset(&id).valuations.len(), 1, "{status:?}");
        }
    }
}

// Lifecycle.

#[test]
fn the_transition_table_is_exactly_the_documented_one() {
    use Status::*;
    let legal = [
        (Action::Submit, Draft, Submitted),
        (Action::Approve, Submitted, Approved),
        (Action::Reject, Submitted, Rejected),
        (Action::Reopen, Rejected, Draft),
        (Action::Suspend, Tokenized, Suspended),
        (Action::Reactivate, Suspended, Tokenized),
        (Action::Retire, Rejected, Retired),
        (Action::Retire, Tokenized, Retired),
        (Action::Retire, Suspended, Retired),
    ];
    for action in ALL_ACTIONS {
        for from in ALL_STATUSES {
            let expected = legal
                .iter()
                .find(|(a, f, _)| *a == action && *f == from)
                .map(|(_, _, to)| *to);
            assert_eq!(action.target(from), expected, "{action:?} from {from:?}");
        }
    }
    assert!(
        ALL_ACTIONS.iter().all(|a| a.target(Retired).is_none()),
        "retired is final"
    );
    let needs: Vec<_> = ALL_ACTIONS
        .into_iter()
        .filter(|a| a.needs_reason())
        .collect();
    assert_eq!(needs, vec![Action::Reject, Action::Suspend, Action::Retire]);
}

#[test]
fn every_legal_move_is_decided_and_recorded() {
    let mut w = World::default();
    for from in ALL_STATUSES {
        for action in ALL_ACTIONS {
            let Some(to) = action.target(from) else {
                continue;
            };
            let id = format!("{}_{action:?}", from.as_str());
            w.drive_to(&id, from);
            let before = w.asset(&id).clone();
            let events = w
                .transition(&id, action, reason_for(action).as_deref())
                .expect("a legal move");
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].name(), to.as_str());
            assert_eq!(
                events[0].change,
                Change::StatusChanged {
                    from,
                    to,
                    reason: reason_for(action),
                    token_id: None
                }
            );
            let after = w.asset(&id);
            assert_eq!(after.status, to);
            assert_eq!(after.version, before.version + 1);
            assert_eq!(
                after.token_id, before.token_id,
                "a person's move keeps the token link"
            );
            let last = after.history.last().expect("the move is in the history");
            assert_eq!(
                (last.from, last.to, last.reason.clone()),
                (from, to, reason_for(action))
            );
            assert_eq!(last.actor, "officer@libertum");
            assert_eq!(after.history.len(), before.history.len() + 1);
        }
    }
}

#[test]
fn the_whole_lifecycle_in_order() {
    let mut w = World::default();
    w.register("a1", sample_profile());
    w.transition("a1", Action::Submit, None).expect("submit");
    w.transition("a1", Action::Reject, Some("  deed missing  "))
        .expect("reject");
    w.transition("a1", Action::Reopen, None).expect("reopen");
    w.transition("a1", Action::Submit, Some("deed added"))
        .expect("submit again, with an optional reason");
    w.transition("a1", Action::Approve, None).expect("approve");
    w.run(Command::MarkTokenized {
        id: "a1".into(),
        token_id: "tok1".into(),
    })
    .expect("tokenized");
    w.transition("a1", Action::Suspend, Some("audit"))
        .expect("suspend");
    w.transition("a1", Action::Reactivate, None)
        .expect("reactivate");
    w.transition("a1", Action::Retire, Some("sold"))
        .expect("retire");

    let asset = w.asset("a1");
    let moves: Vec<_> = asset
        .history
        .iter()
        .map(|c| (c.from, c.to, c.reason.as_deref()))
        .collect();
    use Status::*;
    assert_eq!(
        moves,
        vec![
            (Draft, Submitted, None),
            (Submitted, Rejected, Some("deed missing")),
            (Rejected, Draft, None),
            (Draft, Submitted, Some("deed added")),
            (Submitted, Approved, None),
            (Approved, Tokenized, Some("token class tok1 created")),
            (Tokenized, Suspended, Some("audit")),
            (Suspended, Tokenized, None),
            (Tokenized, Retired, Some("sold")),
        ]
    );
    assert_eq!(asset.status, Retired);
    assert_eq!(
        asset.token_id.as_deref(),
        Some("tok1"),
        "the token link survives later moves"
    );
    assert_eq!(asset.version, 1 + 9);
}

#[test]
fn illegal_moves_are_refused_and_change_nothing() {
    let illegal = [
        (Status::Draft, Action::Approve),
        (Status::Draft, Action::Reject),
        (Status::Draft, Action::Retire),
        (Status::Draft, Action::Reopen),
        (Status::Submitted, Action::Submit),
        (Status::Submitted, Action::Retire),
        (Status::Approved, Action::Reopen),
        (Status::Approved, Action::Suspend),
        (Status::Approved, Action::Approve),
        (Status::Rejected, Action::Approve),
        (Status::Tokenized, Action::Approve),
        (Status::Tokenized, Action::Reactivate),
        (Status::Suspended, Action::Suspend),
        (Status::Retired, Action::Reactivate),
        (Status::Retired, Action::Retire),
        (Status::Retired, Action::Reopen),
    ];
    let mut w = World::default();
    for (i, (from, action)) in illegal.into_iter().enumerate() {
        let id = format!("a{i}");
        w.drive_to(&id, from);
        // A reason is given even when needed, so only the move itself is at fault.
        let err = w.refuse(Command::Transition {
            id: id.as_str().into(),
            action,
            reason: Some("because".into()),
        });
        assert_eq!(
            (err.kind, err.code),
            (ErrorKind::Conflict, "illegal_transition"),
            "{action:?} from {from:?}"
        );
        assert_eq!(w.asset(&id).status, from);
    }
}

#[test]
fn rejecting_suspending_and_retiring_need_a_reason() {
    let cases = [
        (Status::Submitted, Action::Reject),
        (Status::Tokenized, Action::Suspend),
        (Status::Rejected, Action::Retire),
        (Status::Suspended, Action::Retire),
    ];
    let mut w = World::default();
    for (i, (from, action)) in cases.into_iter().enumerate() {
        let id = format!("a{i}");
        w.drive_to(&id, from);
        for reason in [None, Some(String::new()), Some(" \t ".to_owned())] {
            let err = w.refuse(Command::Transition {
                id: id.as_str().into(),
                action,
                reason,
            });
            assert_eq!(
                (err.kind, err.field.as_deref()),
                (ErrorKind::Invalid, Some("reason")),
                "{action:?}"
            );
        }
        let err = w.refuse(Command::Transition {
            id: id.as_str().into(),
            action,
            reason: Some("x".repeat(1_001)),
        });
        assert_eq!(
            err.field.as_deref(),
            Some("reason"),
            "a reason has at most 1000 characters"
        );
        w.transition(&id, action, Some("a real reason"))
            .expect("with a reason");
        assert_eq!(
            w.asset(&id)
                .history
                .last()
                .and_then(|c| c.reason.as_deref()),
            Some("a real reason")
        );
    }
    // Moves that need no reason go through without one.
    w.drive_to("s", Status::Submitted);
    w.transition("s", Action::Approve, None)
        .expect("approval needs no reason");
    assert_eq!(
        w.asset("s").history.last().map(|c| c.reason.clone()),
        Some(None)
    );
}

#[test]
fn suspending_an_approved_asset_says_its_token_class_may_still_be_on_its_way() {
    let mut w = World::default();
    w.drive_to("a", Status::Approved);
    for action in [Action::Suspend, Action::Retire] {
        let err = w.refuse(Command::Transition {
            id: "a".into(),
            action,
            reason: Some("audit".into()),
        });
        assert_eq!(err.code, "illegal_transition");
        assert!(
            err.message.contains("still being recorded") && err.message.contains("retry"),
            "{action:?}: {}",
            err.message
        );
    }
    // Other refusals keep their plain message.
    w.drive_to("d", Status::Draft);
    let err = w.refuse(Command::Transition {
        id: "d".into(),
        action: Action::Suspend,
        reason: Some("audit".into()),
    });
    assert!(!err.message.contains("retry"), "{}", err.message);
}

#[test]
fn only_an_approved_asset_is_marked_tokenized() {
    let mut w = World::default();
    for status in ALL_STATUSES.into_iter().filter(|s| *s != Status::Approved) {
        let id = format!("not_{}", status.as_str());
        w.drive_to(&id, status);
        let err = w.refuse(Command::MarkTokenized {
            id: id.as_str().into(),
            token_id: "t".into(),
        });
        assert_eq!(
            (err.kind, err.code),
            (ErrorKind::Conflict, "illegal_transition"),
            "{status:?}"
        );
    }
    w.drive_to("ok", Status::Approved);
    let events = w
        .run(Command::MarkTokenized {
            id: "ok".into(),
            token_id: "tok_ok".into(),
        })
        .expect("approved can be tokenized");
    assert_eq!(events[0].name(), "tokenized");
    assert_eq!(
        events[0].change,
        Change::StatusChanged {
            from: Status::Approved,
            to: Status::Tokenized,
            reason: Some("token class tok_ok created".into()),
            token_id: Some("tok_ok".into()),
        }
    );
    let asset = w.asset("ok");
    assert_eq!(
        (asset.status, asset.token_id.as_deref()),
        (Status::Tokenized, Some("tok_ok"))
    );
    // Not twice.
    let err = w.refuse(Command::MarkTokenized {
        id: "ok".into(),
        token_id: "tok_other".into(),
    });
    assert_eq!(err.code, "illegal_transition");
    assert_eq!(w.asset("ok").token_id.as_deref(), Some("tok_ok"));
}

// Listing.

/// Seven assets of various kinds, places and statuses.
fn catalogue() -> World {
    let mut w = World::default();
    let rows = [
        (
            "a1",
            "Berlin Loft",
            "real_estate",
            "Berlin",
            "Loft SPV GmbH",
            Some("Top floor"),
        ),
        (
            "a2",
            "Munich Office",
            "real_estate",
            "München",
            "Office SPV",
            None,
        ),
        (
            "a3",
            "Monet Water Lilies",
            "art",
            "Paris",
            "Art Holdings SA",
            Some("Oil on canvas, BERLIN provenance"),
        ),
        ("a4", "Vineyard", "farmland", "Bordeaux", "Vin SPV", None),
        (
            "a5",
            "Hamburg Warehouse",
            "real_estate",
            "Hamburg",
            "Berliner Lager AG",
            None,
        ),
        (
            "a6",
            "Solar Park",
            "energy",
            "Sevilla",
            "Sun SPV",
            Some("40 MW"),
        ),
        (
            "a7",
            "Picasso Sketch",
            "art",
            "Madrid",
            "Art Holdings SA",
            None,
        ),
    ];
    for (id, name, kind, city, owner, description) in rows {
        w.register(id, make_profile(name, kind, city, owner, description));
    }
    for id in ["a2", "a3", "a6"] {
        w.transition(id, Action::Submit, None).expect("submit");
    }
    w.transition("a3", Action::Approve, None).expect("approve");
    w.transition("a6", Action::Reject, Some("no permit"))
        .expect("reject");
    w
}

fn ids(page: &[&Asset]) -> Vec<String> {
    page.iter().map(|a| a.id.to_string()).collect()
}

fn list_all(registry: &Registry, filter: &Filter) -> Vec<String> {
    let (page, next) = registry.list(filter, 0, 1_000);
    assert_eq!(next, None);
    ids(&page)
}

#[test]
fn listing_without_a_filter_is_registration_order() {
    let w = catalogue();
    assert_eq!(
        list_all(&w.registry, &Filter::default()),
        ["a1", "a2", "a3", "a4", "a5", "a6", "a7"]
    );
    let seqs: Vec<u64> = w
        .registry
        .list(&Filter::default(), 0, 100)
        .0
        .iter()
        .map(|a| a.seq)
        .collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
}

#[test]
fn listing_filters_by_status_kind_and_text() {
    let w = catalogue();
    let by_status = |status| Filter {
        status: Some(status),
        ..Filter::default()
    };
    assert_eq!(
        list_all(&w.registry, &by_status(Status::Draft)),
        ["a1", "a4", "a5", "a7"]
    );
    assert_eq!(list_all(&w.registry, &by_status(Status::Submitted)), ["a2"]);
    assert_eq!(list_all(&w.registry, &by_status(Status::Approved)), ["a3"]);
    assert_eq!(list_all(&w.registry, &by_status(Status::Rejected)), ["a6"]);
    assert!(list_all(&w.registry, &by_status(Status::Tokenized)).is_empty());

    let by_kind = |kind: &str| Filter {
        kind: Some(kind.into()),
        ..Filter::default()
    };
    assert_eq!(
        list_all(&w.registry, &by_kind("real_estate")),
        ["a1", "a2", "a5"]
    );
    assert_eq!(list_all(&w.registry, &by_kind("art")), ["a3", "a7"]);
    assert!(
        list_all(&w.registry, &by_kind("real")).is_empty(),
        "kind matches exactly"
    );

    let by_text = |text: &str| Filter {
        text: Some(text.into()),
        ..Filter::default()
    };
    // Name (a1), description (a3, upper-case) and legal owner (a5) all match, case-insensitively.
    assert_eq!(
        list_all(&w.registry, &by_text("berlin")),
        ["a1", "a3", "a5"]
    );
    assert_eq!(
        list_all(&w.registry, &by_text("MÜNCHEN")),
        ["a2"],
        "city, with Unicode case folding"
    );
    assert_eq!(
        list_all(&w.registry, &by_text("art holdings")),
        ["a3", "a7"]
    );
    assert_eq!(list_all(&w.registry, &by_text("40 mw")), ["a6"]);
    assert!(
        list_all(&w.registry, &by_text("farmland")).is_empty(),
        "the kind is not searched as text"
    );

    let combined = Filter {
        status: Some(Status::Draft),
        kind: Some("real_estate".into()),
        text: Some("spv".into()),
    };
    assert_eq!(list_all(&w.registry, &combined), ["a1"]);
}

/// Walks every page of `filter` with page size `limit`.
fn walk(registry: &Registry, filter: &Filter, limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let (page, next) = registry.list(filter, after, limit);
        assert!(page.len() <= limit);
        pages += 1;
        assert!(pages <= registry.len() + 1, "pagination terminates");
        seen.extend(ids(&page));
        match next {
            Some(cursor) => {
                assert_eq!(page.len(), limit, "only a full page has a next page");
                assert!(cursor > after, "the cursor moves forward");
                after = cursor;
            }
            None => break,
        }
    }
    seen
}

#[test]
fn pages_cover_every_match_exactly_once() {
    let mut w = catalogue();
    for i in 0..30 {
        let kind = if i % 3 == 0 { "art" } else { "real_estate" };
        w.register(
            &format!("b{i:02}"),
            make_profile(&format!("Extra {i}"), kind, "Lyon", "SPV", None),
        );
    }
    let filters = [
        Filter::default(),
        Filter {
            kind: Some("art".into()),
            ..Filter::default()
        },
        Filter {
            status: Some(Status::Draft),
            ..Filter::default()
        },
        Filter {
            text: Some("berlin".into()),
            ..Filter::default()
        },
        Filter {
            text: Some("nothing matches this".into()),
            ..Filter::default()
        },
    ];
    for filter in &filters {
        let everything = list_all(&w.registry, filter);
        for limit in 1..=12 {
            let walked = walk(&w.registry, filter, limit);
            assert_eq!(walked, everything, "{filter:?} with pages of {limit}");
        }
    }
    let total = w.registry.len();
    assert_eq!(total, 37);
    let (page, next) = w.registry.list(&Filter::default(), 0, total);
    assert_eq!(
        (page.len(), next),
        (total, None),
        "an exactly full last page has no next page"
    );
    let (page, next) = w.registry.list(&Filter::default(), 35, 10);
    assert_eq!(
        (ids(&page), next),
        (vec!["b28".to_owned(), "b29".to_owned()], None)
    );
    let (page, next) = w.registry.list(&Filter::default(), 1_000, 10);
    assert!(
        page.is_empty() && next.is_none(),
        "a cursor past the end gives an empty last page"
    );
}

#[test]
fn the_cursor_is_the_seq_before_the_next_match() {
    let w = catalogue();
    let drafts = Filter {
        status: Some(Status::Draft),
        ..Filter::default()
    };
    let (page, next) = w.registry.list(&drafts, 0, 2);
    assert_eq!(ids(&page), ["a1", "a4"]);
    assert_eq!(next, Some(4), "the next match is a5, seq 5");
    let (page, next) = w.registry.list(&drafts, 4, 2);
    assert_eq!(
        (ids(&page), next),
        (vec!["a5".to_owned(), "a7".to_owned()], None)
    );
}

// Replay.

#[test]
fn replaying_the_events_rebuilds_the_same_registry() {
    let mut w = catalogue();
    w.run(Command::AddDocument {
        id: "a1".into(),
        document_id: "d1".into(),
        document: good_document(),
    })
    .expect("document");
    w.run(Command::AddValuation {
        id: "a3".into(),
        valuation: valuation(1_000, date!(2025 - 02 - 01)),
    })
    .expect("valuation");
    w.run(Command::MarkTokenized {
        id: "a3".into(),
        token_id: "tok3".into(),
    })
    .expect("tokenized");
    w.transition("a3", Action::Suspend, Some("audit"))
        .expect("suspended");
    let later = ctx_at(datetime!(2025-04-01 12:00 UTC));
    w.run_at(
        Command::Update {
            id: "a4".into(),
            expected_version: 1,
            profile: make_profile(
                "Vineyard Estate",
                "farmland",
                "Bordeaux",
                "Vin SPV",
                Some("12 ha"),
            ),
        },
        &later,
    )
    .expect("update");
    w.transition("a6", Action::Retire, Some("abandoned"))
        .expect("retire");
    // Refused commands leave nothing in the log.
    assert!(w.transition("a1", Action::Approve, None).is_err());

    let mut replayed = Registry::default();
    for event in &w.log {
        replayed.apply(event);
    }
    assert_eq!(replayed.len(), w.registry.len());
    let original = w.all();
    let (page, _) = replayed.list(&Filter::default(), 0, usize::MAX);
    let rebuilt: Vec<Asset> = page.into_iter().cloned().collect();
    assert_eq!(rebuilt, original);
    assert_eq!(
        replayed.get("a3").and_then(|a| a.token_id.as_deref()),
        Some("tok3")
    );
    assert_eq!(
        replayed.get("a4").map(|a| (a.version, a.updated_at)),
        Some((2, later.now))
    );

    // The events survive a JSON round trip unchanged, so a stored log replays the same.
    let json = serde_json::to_string(&w.log).expect("serialise");
    let back: Vec<Event> = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, w.log);
}

#[test]
fn events_of_unknown_assets_are_ignored_on_replay() {
    let mut registry = Registry::default();
    registry.apply(&Event {
        asset_id: "ghost".into(),
        at: T0,
        actor: "x".into(),
        change: Change::Updated {
            profile: sample_profile(),
        },
    });
    assert!(registry.is_empty());
    assert!(registry.get("ghost").is_none());
}

#[test]
fn a_redelivered_token_created_changes_nothing_and_another_token_is_refused() {
    let mut w = World::default();
    w.drive_to("a1", Status::Tokenized);
    let before = w.asset("a1").clone();
    let again = w
        .run(Command::MarkTokenized {
            id: "a1".into(),
            token_id: "tok_a1".into(),
        })
        .expect("a redelivery is not an error");
    assert!(again.is_empty(), "no event for a redelivery");
    assert_eq!(w.asset("a1"), &before);
    let other = w.run(Command::MarkTokenized {
        id: "a1".into(),
        token_id: "tok_other".into(),
    });
    assert_eq!(other.expect_err("refused").code, "illegal_transition");
}
