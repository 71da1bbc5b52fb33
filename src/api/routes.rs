//! The API's endpoints, in one table: method, path pattern, the scope a
//! token needs, and what answers. The dispatcher and the OpenAPI
//! document's test both read it, so the two cannot drift apart.

use http::{Method, StatusCode};

use super::problem::Problem;
use crate::store::Scope;

/// What answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Fleet,
    Dashboard,
    Plan,
    Events,
    History,
    OpenApi,
    Deploy,
    Scale,
    Rollback,
    Drain,
    Restart,
    Reconcile,
}

#[derive(Debug)]
pub struct Route {
    pub method: Method,
    /// `/v1/apps/{app}/deploy`: a `{name}` segment takes one path segment.
    pub path: &'static str,
    pub scope: Scope,
    pub op: Op,
}

pub static ROUTES: [Route; 12] = [
    route(Method::GET, "/v1/fleet", Scope::Read, Op::Fleet),
    route(Method::GET, "/v1/dashboard", Scope::Read, Op::Dashboard),
    route(Method::GET, "/v1/plan", Scope::Read, Op::Plan),
    route(Method::GET, "/v1/events", Scope::Read, Op::Events),
    route(Method::GET, "/v1/history", Scope::Read, Op::History),
    route(Method::GET, "/v1/openapi.json", Scope::Read, Op::OpenApi),
    route(
        Method::POST,
        "/v1/apps/{app}/deploy",
        Scope::Deploy,
        Op::Deploy,
    ),
    route(
        Method::POST,
        "/v1/apps/{app}/scale",
        Scope::Deploy,
        Op::Scale,
    ),
    route(
        Method::POST,
        "/v1/apps/{app}/rollback",
        Scope::Deploy,
        Op::Rollback,
    ),
    route(
        Method::POST,
        "/v1/nodes/{id}/drain",
        Scope::Admin,
        Op::Drain,
    ),
    route(
        Method::POST,
        "/v1/nodes/{id}/containers/{name}/restart",
        Scope::Admin,
        Op::Restart,
    ),
    route(Method::POST, "/v1/reconcile", Scope::Admin, Op::Reconcile),
];

const fn route(method: Method, path: &'static str, scope: Scope, op: Op) -> Route {
    Route {
        method,
        path,
        scope,
        op,
    }
}

/// The route for `method` and `path`, and the values of its `{…}`
/// segments, in order; 404 for no such path, 405 for another method.
pub fn find(method: &Method, path: &str) -> Result<(&'static Route, Vec<String>), Problem> {
    let mut allowed = false;
    for route in &ROUTES {
        let Some(params) = matches(route.path, path) else {
            continue;
        };
        if route.method == method || (method == Method::HEAD && route.method == Method::GET) {
            return Ok((route, params));
        }
        allowed = true;
    }
    Err(if allowed {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} does not take {method}"),
        )
    } else {
        Problem::new(
            StatusCode::NOT_FOUND,
            format!("no endpoint {path}: the API's endpoints are listed at /v1/openapi.json"),
        )
    })
}

/// The `{…}` values when `path` fits `pattern`. A value is one non-empty
/// segment, percent-decoded.
fn matches(pattern: &str, path: &str) -> Option<Vec<String>> {
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    let mut params = Vec::new();
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(w), Some(g)) if w.starts_with('{') => {
                if g.is_empty() {
                    return None;
                }
                let decoded: String = form_urlencoded::parse(format!("v={g}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())?;
                params.push(decoded);
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_find_their_route_and_segments() {
        let (r, p) = find(&Method::POST, "/v1/apps/blog/deploy").expect("deploy");
        assert_eq!((r.op, p), (Op::Deploy, vec!["blog".to_owned()]));
        let (r, p) = find(
            &Method::POST,
            "/v1/nodes/n1/containers/prism-blog-web-0/restart",
        )
        .expect("restart");
        assert_eq!((r.op, p.len()), (Op::Restart, 2));
        let (r, p) = find(&Method::POST, "/v1/nodes/i-0abc/drain").expect("drain");
        assert_eq!(
            (r.op, r.scope, p),
            (Op::Drain, Scope::Admin, vec!["i-0abc".to_owned()])
        );
        assert_eq!(
            find(&Method::HEAD, "/v1/fleet").expect("head").0.op,
            Op::Fleet
        );
        let p = find(&Method::GET, "/v1/apps/blog/deploy").expect_err("get");
        assert_eq!(p.status, 405);
        for missing in [
            "/v1/apps//deploy",
            "/v1/fleet/",
            "/v1/apps/blog",
            "/",
            "/v2/fleet",
        ] {
            let p = find(&Method::POST, missing).expect_err(missing);
            assert_eq!(p.status, 404, "{missing}");
        }
    }

    #[test]
    fn the_openapi_document_lists_exactly_the_routes_with_their_scopes() {
        let doc: serde_json::Value = serde_json::from_str(super::super::OPENAPI).expect("JSON");
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented = Vec::new();
        for (path, methods) in paths {
            for (method, op) in methods.as_object().expect("methods") {
                let scope = op["x-prism-scope"].as_str().expect("a scope").to_owned();
                assert!(op["responses"]["401"].is_object(), "{method} {path}: 401");
                documented.push((method.to_uppercase(), path.clone(), scope));
            }
        }
        let mut routed: Vec<(String, String, String)> = ROUTES
            .iter()
            .map(|r| {
                (
                    r.method.to_string(),
                    r.path.to_owned(),
                    r.scope.as_str().to_owned(),
                )
            })
            .collect();
        documented.sort();
        routed.sort();
        assert_eq!(documented, routed);
    }
}
