//! `POST /v1/tokens/{token_id}/imports`: a streaming import of operations for loads larger than
//! one batch.
//!
//! The body is NDJSON, one operation per line (the objects of a batch's `operations`). It is
//! read as it arrives, cut into chunks of `chunk` operations (1,000 by default, at most 8,000),
//! and each chunk is committed as an independent batch: every operation stands alone and is
//! reported. The answer is NDJSON too, streamed while the import runs: one line per chunk once
//! it is durable (`ImportProgress`), then a last line (`ImportDone`) or the error that stopped
//! the import (`ImportStopped`). Memory holds one chunk, whatever the body's size.
//!
//! Under an `Idempotency-Key`, each chunk is idempotent on its own (the key, the chunk's number
//! and its lines' fingerprint): an import broken off (a lost connection, a failover, a bad line)
//! is sent again whole with the same key, and the chunks already committed are replayed, not
//! applied again (`"replayed": true`). A chunk that differs from the one committed under the
//! same key and number stops the import with `idempotency_key_reused`.

use std::time::Duration;

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use libertum_domain::{Id, token};
use libertum_platform::{
    ApiError,
    auth::Principal,
    extract::{Path, Query, fingerprint, idempotency_key, parse, scoped_key},
};
use libertum_store::{Engine, EngineError, Submission};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    api::{allow_operations, bulk_reply},
    dto::BulkResult,
    state::{Command, TokensState},
};

/// Operations per chunk unless the request says.
pub const DEFAULT_CHUNK: usize = 1_000;
/// The longest line taken.
pub const MAX_LINE: usize = 16 * 1024;
/// How long the body may make no progress before the import stops.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
const NDJSON: &str = "application/x-ndjson";

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// Operations per chunk, 1 to 8,000 (default 1,000). Each chunk commits on its own.
    pub chunk: Option<usize>,
}

/// A chunk committed (or replayed).
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportProgress {
    /// The chunk's number, from 0.
    pub chunk: usize,
    /// The body's lines the chunk holds, from 1, both included.
    pub first_line: usize,
    pub last_line: usize,
    pub applied: usize,
    pub refused: usize,
    /// Committed by an earlier send of this import under the same `Idempotency-Key`.
    pub replayed: bool,
    /// The token's version after the chunk.
    pub version: u64,
    /// The refused operations, each with its line.
    pub refusals: Vec<LineRefusal>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LineRefusal {
    pub line: usize,
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The last line of an import that read its whole body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportDone {
    /// Always `true`.
    pub done: bool,
    pub lines: usize,
    pub operations: usize,
    pub applied: usize,
    pub refused: usize,
    pub chunks: usize,
}

/// The last line of an import that stopped early: the chunks reported before it are
/// committed; nothing from `line` on is.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportStopped {
    /// Always `false`.
    pub done: bool,
    /// The first line not imported.
    pub line: usize,
    pub status: u16,
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// One line of an import's answer: a chunk's progress, the end, or why it stopped.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum ImportLine {
    Progress(ImportProgress),
    Done(ImportDone),
    Stopped(ImportStopped),
}

/// Import operations from an NDJSON body, in chunks, each chunk an independent batch; the
/// progress is streamed back as NDJSON, one line per chunk committed.
#[utoipa::path(post, path = "/{token_id}/imports", tag = "movements",
    request_body(content = String, content_type = "application/x-ndjson", description = "one batch operation per line"),
    params(("token_id" = String, Path), ImportQuery, ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, content_type = "application/x-ndjson", body = ImportLine,
        description = "one `ImportProgress` line per chunk, then `ImportDone`, or `ImportStopped` if a line or a chunk stopped the import"),
        (status = 404, body = libertum_platform::Problem, content_type = "application/problem+json"),
        (status = 415, body = libertum_platform::Problem, content_type = "application/problem+json")))]
pub async fn import(
    State(engine): State<Engine<TokensState>>,
    principal: Principal,
    Path(token_id): Path<String>,
    Query(query): Query<ImportQuery>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Body,
) -> Result<Response, ApiError> {
    principal.allow(libertum_platform::auth::Operation::Batch)?;
    let chunk = query.chunk.unwrap_or(DEFAULT_CHUNK);
    if !(1..=token::MAX_BATCH).contains(&chunk) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("chunk must be 1 to {}", token::MAX_BATCH),
        )
        .at("chunk"));
    }
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(NDJSON));
    if !ndjson {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "an import's body must be NDJSON with Content-Type: application/x-ndjson",
        ));
    }
    let key =
        idempotency_key(&headers)?.map(|key| scoped_key(&principal.subject, uri.path(), &key));
    if engine
        .read()
        .await
        .0
        .token(&Id::from(token_id.as_str()))
        .is_none()
    {
        return Err(ApiError::not_found(
            "token_not_found",
            format!("token {token_id} does not exist"),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let import = Import {
        engine,
        principal,
        token_id,
        chunk,
        key,
        tx,
    };
    tokio::spawn(tracing::Instrument::instrument(
        import.run(body),
        tracing::Span::current(),
    ));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
    });
    let mut response = Body::from_stream(stream).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    Ok(response)
}

struct Import {
    engine: Engine<TokensState>,
    principal: Principal,
    token_id: String,
    chunk: usize,
    key: Option<String>,
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
}

/// Why an import stopped before the end of its body.
struct Stop {
    line: usize,
    error: ApiError,
}

#[derive(Default)]
struct Totals {
    lines: usize,
    operations: usize,
    applied: usize,
    refused: usize,
    chunks: usize,
}

impl Import {
    async fn run(self, body: Body) {
        let mut totals = Totals::default();
        let last = match self.read(body, &mut totals).await {
            Ok(()) => to_line(&ImportDone {
                done: true,
                lines: totals.lines,
                operations: totals.operations,
                applied: totals.applied,
                refused: totals.refused,
                chunks: totals.chunks,
            }),
            Err(Stop { line, error }) => {
                if error.status.is_server_error() {
                    tracing::warn!(line, code = %error.code, detail = %error.detail, "an import stopped");
                }
                to_line(&ImportStopped {
                    done: false,
                    line,
                    status: error.status.as_u16(),
                    code: error.code.into_owned(),
                    message: error.detail,
                    field: error.field,
                })
            }
        };
        let _ = self.tx.send(last).await;
    }

    /// Reads the body line by line, committing each full chunk (and the last one).
    async fn read(&self, body: Body, totals: &mut Totals) -> Result<(), Stop> {
        let mut frames = body.into_data_stream();
        let mut buffer: Vec<u8> = Vec::new();
        // The chunk being gathered: its operations, their lines and the lines' bytes.
        let mut operations: Vec<token::Operation> = Vec::with_capacity(self.chunk);
        let mut lines: Vec<usize> = Vec::with_capacity(self.chunk);
        let mut raw: Vec<u8> = Vec::new();
        let mut first_line = 1;
        let mut ended = false;
        while !ended {
            let frame = tokio::time::timeout(READ_TIMEOUT, frames.next()).await;
            match frame {
                Err(_) => {
                    return Err(Stop {
                        line: totals.lines + 1,
                        error: ApiError::new(
                            StatusCode::REQUEST_TIMEOUT,
                            "request_timeout",
                            format!("the body made no progress for {} s", READ_TIMEOUT.as_secs()),
                        ),
                    });
                }
                Ok(Some(Err(error))) => {
                    return Err(Stop {
                        line: totals.lines + 1,
                        error: ApiError::bad_request(
                            "body_broken",
                            format!("the body broke off: {error}"),
                        ),
                    });
                }
                Ok(Some(Ok(bytes))) => buffer.extend_from_slice(&bytes),
                Ok(None) => {
                    ended = true;
                    if !buffer.is_empty() && buffer.last() != Some(&b'\n') {
                        buffer.push(b'\n');
                    }
                }
            }
            let mut start = 0;
            while let Some(end) = buffer[start..].iter().position(|b| *b == b'\n') {
                let line = &buffer[start..start + end];
                start += end + 1;
                totals.lines += 1;
                let number = totals.lines;
                if line.len() > MAX_LINE {
                    return Err(Stop {
                        line: number,
                        error: line_too_long(),
                    });
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let operation: token::Operation = parse(line).map_err(|e| Stop {
                    line: number,
                    error: ApiError {
                        detail: format!("line {number}: {}", e.detail),
                        ..e
                    },
                })?;
                if operations.is_empty() {
                    first_line = number;
                }
                operations.push(operation);
                lines.push(number);
                raw.extend_from_slice(line);
                raw.push(b'\n');
                if operations.len() == self.chunk {
                    self.commit(&mut operations, &mut lines, &mut raw, first_line, totals)
                        .await?;
                }
            }
            buffer.drain(..start);
            if buffer.len() > MAX_LINE {
                return Err(Stop {
                    line: totals.lines + 1,
                    error: line_too_long(),
                });
            }
        }
        if !operations.is_empty() {
            self.commit(&mut operations, &mut lines, &mut raw, first_line, totals)
                .await?;
        }
        Ok(())
    }

    /// Commits the gathered chunk as an independent batch and reports it; empties it.
    async fn commit(
        &self,
        operations: &mut Vec<token::Operation>,
        lines: &mut Vec<usize>,
        raw: &mut Vec<u8>,
        first_line: usize,
        totals: &mut Totals,
    ) -> Result<(), Stop> {
        let number = totals.chunks;
        let stop = |error: ApiError| Stop {
            line: first_line,
            error,
        };
        allow_operations(&self.principal, operations).map_err(stop)?;
        crate::holds::name_holds(operations);
        crate::movements::fill_reversals(&self.engine, &self.token_id, operations)
            .await
            .map_err(stop)?;
        let idempotency = self.key.as_ref().map(|key| {
            (
                format!("{key}#chunk-{number}"),
                fingerprint(&[b"import", self.chunk.to_string().as_bytes(), raw]),
            )
        });
        let id = Id::from(self.token_id.as_str());
        let reply = self
            .engine
            .submit(Submission {
                command: Some(Command {
                    actor: Id::from(self.principal.subject.as_str()),
                    command: token::Command::Batch {
                        token_id: id.clone(),
                        operations: std::mem::take(operations),
                        mode: token::BatchMode::Independent,
                    },
                }),
                idempotency,
                checkpoint: None,
                reply: bulk_reply(id, self.principal.is_staff()),
                partition: None,
                span: tracing::Span::current(),
            })
            .await
            .map_err(|e: EngineError| stop(e.into()))?;
        if reply.status != 200 {
            return Err(stop(ApiError::unavailable(format!(
                "chunk {number} was answered {}",
                reply.status
            ))));
        }
        let result: BulkResult = serde_json::from_slice(&reply.body).map_err(|e| {
            stop(ApiError::unavailable(format!(
                "chunk {number}'s answer: {e}"
            )))
        })?;
        let refusals: Vec<LineRefusal> = result
            .results
            .into_iter()
            .filter(|r| r.status != "applied")
            .map(|r| LineRefusal {
                line: lines.get(r.index).copied().unwrap_or(first_line),
                code: r.code.unwrap_or_default(),
                message: r.message.unwrap_or_default(),
                field: r.field,
            })
            .collect();
        let progress = ImportProgress {
            chunk: number,
            first_line,
            last_line: lines.last().copied().unwrap_or(first_line),
            applied: result.applied,
            refused: result.refused,
            replayed: reply.replayed,
            version: result.version,
            refusals,
        };
        totals.chunks += 1;
        totals.operations += lines.len();
        totals.applied += result.applied;
        totals.refused += result.refused;
        lines.clear();
        raw.clear();
        if self.tx.send(to_line(&progress)).await.is_err() {
            // The client went away: what is committed stands; the rest is not read.
            return Err(stop(ApiError::bad_request(
                "client_gone",
                "the client went away",
            )));
        }
        Ok(())
    }
}

fn line_too_long() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "line_too_long",
        format!("a line must be at most {MAX_LINE} bytes"),
    )
}

fn to_line(value: &impl Serialize) -> bytes::Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    bytes::Bytes::from(line)
}
