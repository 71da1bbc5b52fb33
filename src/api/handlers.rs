//! What each endpoint does, once its caller is known to be allowed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::Deserialize;

use super::problem::Problem;
use super::routes::Op;
use super::{Body, Caller, OPENAPI, Shared, json_body};
use crate::config::{ConfigError, EditError};
use crate::rollout::{self, Change, RolloutError, Watch};
use crate::store::{Event, NewEvent, NewRequest, RequestKind, Store, StoreError};
use crate::tui::data::{Dashboard, DesiredPods, Snapshot};

/// The largest request body taken; past it, 413.
pub const MAX_BODY: usize = 64 * 1024;
/// A body declared larger is still read (and dropped) up to this, so that
/// the client hears the 413.
const DRAIN_MAX: usize = 1024 * 1024;
/// A deploy waits this long when the request names no timeout.
const WAIT_DEFAULT: Duration = Duration::from_secs(300);
/// And this long at most.
const WAIT_MAX: Duration = Duration::from_secs(3600);
/// How often the event stream looks for new events, and sends a comment
/// to keep idle connections open.
const EVENTS_POLL: Duration = Duration::from_millis(500);
const EVENTS_KEEPALIVE: Duration = Duration::from_secs(15);

pub(super) async fn handle(
    shared: &Arc<Shared>,
    caller: &Caller,
    op: Op,
    params: Vec<String>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Problem> {
    let mut params = params.into_iter();
    let param = params.next().unwrap_or_default();
    match op {
        Op::OpenApi => {
            let mut resp = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())).boxed());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        }
        Op::Fleet => {
            let config = shared.config.clone();
            let doc = blocking(move || crate::cli::status::document(&config)).await??;
            Ok(json_body(StatusCode::OK, &doc))
        }
        Op::Dashboard => {
            let file = shared.config.file.clone();
            let fleet = tokio::fs::read_to_string(&file)
                .await
                .ok()
                .and_then(|text| crate::config::parse(&file, &text).ok())
                .unwrap_or_else(|| shared.config.fleet.clone());
            let snapshot = read(shared, Snapshot::load).await?.unwrap_or_default();
            let doc = Dashboard {
                fleet: fleet.fleet.name.clone(),
                desired: DesiredPods::from_fleet(&fleet),
                snapshot,
            };
            Ok(json_body(StatusCode::OK, &doc))
        }
        Op::Plan => {
            let plan = read(shared, |s| s.last_plan())
                .await?
                .flatten()
                .ok_or_else(|| {
                    Problem::new(
                        StatusCode::NOT_FOUND,
                        "no plan yet: the applier has not finished a pass",
                    )
                })?;
            Ok(json_body(StatusCode::OK, &plan))
        }
        Op::History => {
            let query = Query::of(&req);
            let app = query.get("app").map(str::to_owned);
            let limit = query.number("limit")?.unwrap_or(100).min(1000);
            let changes = read(shared, move |s| s.history(app.as_deref(), limit))
                .await?
                .unwrap_or_default();
            Ok(json_body(StatusCode::OK, &changes))
        }
        Op::Events => events(shared, &req).await,
        Op::Deploy => {
            let body: DeployBody = body(req).await?;
            if body.services.is_empty() {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "services is empty: name at least one service and its image",
                ));
            }
            let images = body.services.into_iter().collect();
            let wait = Wait {
                wait: body.wait,
                timeout: body.timeout,
            };
            change(shared, caller, &param, Change::Deploy(images), wait).await
        }
        Op::Scale => {
            let body: ScaleBody = body(req).await?;
            let wait = Wait {
                wait: body.wait,
                timeout: body.timeout,
            };
            change(shared, caller, &param, Change::Scale(body.instances), wait).await
        }
        Op::Rollback => {
            let body: Wait = body(req).await?;
            change(shared, caller, &param, Change::Rollback, body).await
        }
        Op::Drain => {
            let id = param;
            let known = {
                let id = id.clone();
                read(shared, move |s| Ok(s.nodes()?.iter().any(|n| n.id == id))).await?
            };
            if known != Some(true) {
                return Err(Problem::new(
                    StatusCode::NOT_FOUND,
                    format!("no node {id} in the fleet (GET /v1/fleet lists them)"),
                ));
            }
            ask(shared, caller, RequestKind::Drain, Some(id), None).await
        }
        Op::Restart => {
            let (node, name) = (param, params.next().unwrap_or_default());
            let known = {
                let (node, name) = (node.clone(), name.clone());
                read(shared, move |s| {
                    Ok(s.containers()?
                        .iter()
                        .any(|c| c.node_id == node && c.name == name))
                })
                .await?
            };
            if known != Some(true) {
                return Err(Problem::new(
                    StatusCode::NOT_FOUND,
                    format!("no container {name} of the fleet on node {node}"),
                ));
            }
            ask(shared, caller, RequestKind::Restart, Some(node), Some(name)).await
        }
        Op::Reconcile => ask(shared, caller, RequestKind::Reconcile, None, None).await,
    }
}

/// Leaves a request for the applier, which takes it within a second and
/// records how it ended (an event, and the request's row).
async fn ask(
    shared: &Shared,
    caller: &Caller,
    kind: RequestKind,
    node_id: Option<String>,
    container: Option<String>,
) -> Result<Response<Body>, Problem> {
    let req = NewRequest {
        kind,
        node_id,
        container,
        by: caller.who(),
    };
    let id = shared
        .journal
        .call("leave a request", move |s| s.add_request(&req))
        .await
        .map_err(store_problem)?;
    Ok(json_body(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "request": id, "kind": kind.as_str() }),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wait {
    /// Answer once the change has rolled out (or failed, and was rolled
    /// back when the app asks for that).
    #[serde(default)]
    wait: bool,
    /// How long to wait: `5m`, `90s` (default 5m, at most 1h).
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    services: BTreeMap<String, String>,
    #[serde(default)]
    wait: bool,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    instances: u32,
    #[serde(default)]
    wait: bool,
    timeout: Option<String>,
}

/// Makes a change as `caller`, says so in an event, and when asked waits
/// for it to roll out.
async fn change(
    shared: &Shared,
    caller: &Caller,
    app: &str,
    change: Change,
    wait: Wait,
) -> Result<Response<Body>, Problem> {
    let timeout = match &wait.timeout {
        None => WAIT_DEFAULT,
        Some(t) => humantime::parse_duration(t)
            .ok()
            .filter(|d| *d <= WAIT_MAX && !d.is_zero())
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("timeout {t:?} is not a duration from 1s to 1h (e.g. \"5m\")"),
                )
            })?,
    };
    let file = shared.config.file.clone();
    let state = shared.config.state_path();
    let who = caller.who();
    let recorded = {
        let (file, state, app, who) = (file.clone(), state.clone(), app.to_owned(), who.clone());
        blocking(move || rollout::make(&file, &state, &app, &change, &who))
            .await?
            .map_err(rollout_problem)?
    };
    shared.edited.send_replace(Some(recorded.after.clone()));
    let message = format!(
        "{app}: {} (change #{}) by {who}",
        recorded.change, recorded.id
    );
    tracing::info!("api: {message}");
    shared.journal.submit("record an API change", {
        let event = NewEvent::info("api.change", message).app(app);
        move |s| s.record_event(&event).map(|_| ())
    });
    let change = serde_json::json!({ "id": recorded.id, "app": app, "change": recorded.change });
    if !wait.wait {
        return Ok(json_body(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "change": change }),
        ));
    }
    let watch = Watch {
        file,
        state,
        app: app.to_owned(),
        timeout,
        who,
    };
    // In a task of its own: a client that goes away (a CI job cancelled)
    // does not stop the wait, nor the rollback it may end in.
    let outcome = tokio::spawn(async move { watch.wait(&recorded).await })
        .await
        .map_err(|_| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "the wait ended early"))?
        .map_err(rollout_problem)?;
    Ok(json_body(
        StatusCode::OK,
        &serde_json::json!({ "change": change, "result": outcome }),
    ))
}

/// `GET /v1/events`: Server-Sent Events, one per event the applier
/// records from now on (or after `Last-Event-ID` / `?after=ID`).
async fn events(shared: &Arc<Shared>, req: &Request<Incoming>) -> Result<Response<Body>, Problem> {
    let resume = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let after = match resume {
        Some(id) => Some(id.trim().parse::<i64>().map_err(|_| {
            Problem::new(StatusCode::BAD_REQUEST, "Last-Event-ID is not an event id")
        })?),
        None => Query::of(req).number("after")?,
    };
    let after = match after {
        Some(id) => id,
        None => read(shared, |s| s.events(1))
            .await?
            .and_then(|e| e.first().map(|e| e.id))
            .unwrap_or(0),
    };
    let state = shared.config.state_path();
    let stream = futures::stream::unfold(
        (state, after, tokio::time::Instant::now()),
        |(state, after, quiet_since)| async move {
            let mut quiet_since = quiet_since;
            loop {
                tokio::time::sleep(EVENTS_POLL).await;
                let path = state.clone();
                let new: Vec<Event> = tokio::task::spawn_blocking(move || {
                    Store::open_read_only(&path)
                        .ok()
                        .flatten()
                        .and_then(|s| s.events_since(after, 100).ok())
                        .unwrap_or_default()
                })
                .await
                .unwrap_or_default();
                if let Some(newest) = new.last().map(|e| e.id) {
                    let text: String = new.iter().map(sse).collect();
                    let frame = Frame::data(Bytes::from(text));
                    return Some((
                        Ok::<_, std::convert::Infallible>(frame),
                        (state, newest, tokio::time::Instant::now()),
                    ));
                }
                if quiet_since.elapsed() >= EVENTS_KEEPALIVE {
                    quiet_since = tokio::time::Instant::now();
                    let frame = Frame::data(Bytes::from_static(b": keep-alive\n\n"));
                    return Some((Ok(frame), (state, after, quiet_since)));
                }
            }
        },
    );
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// One event as Server-Sent Events write it.
fn sse(e: &Event) -> String {
    let data = serde_json::to_string(e).unwrap_or_default();
    // Kinds are Prism's own words; a newline would end the field.
    let kind = e.kind.replace(['\n', '\r'], " ");
    format!("id: {}\nevent: {kind}\ndata: {data}\n\n", e.id)
}

/// The request's JSON body, at most [`MAX_BODY`]; an empty one is `{}`.
/// A larger body is read on (to [`DRAIN_MAX`]) and dropped before the 413,
/// so a client still sending it gets the answer rather than a reset.
async fn body<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {MAX_BODY} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        if declared.is_some_and(|n| n <= DRAIN_MAX as u64) {
            let _ = Limited::new(req.into_body(), DRAIN_MAX).collect().await;
        }
        return Err(too_large());
    }
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(_) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "the body could not be read",
            ));
        }
    };
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(text).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not the JSON this endpoint takes: {e}"),
        )
    })
}

/// A read of the state file; `None` when there is none yet.
async fn read<T: Send + 'static>(
    shared: &Shared,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<Option<T>, Problem> {
    let state = shared.config.state_path();
    blocking(move || match Store::open_read_only(&state)? {
        Some(store) => f(&store).map(Some),
        None => Ok(None),
    })
    .await?
    .map_err(store_problem)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f).await.map_err(|_| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request's work ended early",
        )
    })
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        store_problem(e)
    }
}

fn store_problem(e: StoreError) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn rollout_problem(e: RolloutError) -> Problem {
    let status = match &e {
        RolloutError::Edit(EditError::NoApp(_)) => StatusCode::NOT_FOUND,
        RolloutError::Edit(_) | RolloutError::Config(ConfigError::Invalid(_)) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        RolloutError::NothingToRollBack { .. }
        | RolloutError::Conflict(_)
        | RolloutError::Superseded { .. } => StatusCode::CONFLICT,
        RolloutError::Config(_)
        | RolloutError::Store(_)
        | RolloutError::Unrecorded(_)
        | RolloutError::Write { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Problem::new(status, e.to_string())
}

/// The query string's values.
struct Query(Vec<(String, String)>);

impl Query {
    fn of<B>(req: &Request<B>) -> Query {
        let q = req.uri().query().unwrap_or("");
        Query(form_urlencoded::parse(q.as_bytes()).into_owned().collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, Problem> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        format!("{key}={v:?} is not a number"),
                    )
                })
            })
            .transpose()
    }
}
