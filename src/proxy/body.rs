//! Response bodies: an instance's, streamed through while its request
//! counts as in flight, or a short page the proxy writes itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::backends::InFlight;
use super::limits::Answering;
use super::pool::Lease;

/// A response body as the client connection sends it.
#[derive(Debug)]
pub(crate) struct ProxyBody {
    kind: Kind,
    /// The client connection's count of responses being sent, held until
    /// hyper is done with the body.
    answering: Option<Answering>,
}

#[derive(Debug)]
enum Kind {
    /// The proxy's own page; `None` once sent.
    Page(Option<Bytes>),
    /// An instance's body; the guard ends the request's time in flight
    /// when the body ends or the client goes away. The connection it came
    /// on goes back to the pool if the body was read to the end.
    Upstream {
        body: Incoming,
        guard: Option<InFlight>,
        lease: Option<Lease>,
    },
}

impl ProxyBody {
    pub fn upstream(body: Incoming, guard: InFlight, lease: Lease) -> ProxyBody {
        ProxyBody::of(Kind::Upstream {
            body,
            guard: Some(guard),
            lease: Some(lease),
        })
    }

    /// No body at all (a 101's, or a page already sent).
    pub fn empty() -> ProxyBody {
        ProxyBody::of(Kind::Page(None))
    }

    fn of(kind: Kind) -> ProxyBody {
        ProxyBody {
            kind,
            answering: None,
        }
    }

    /// The same body, counted on its connection until it is sent.
    pub fn answering(mut self, answering: Answering) -> ProxyBody {
        self.answering = Some(answering);
        self
    }
}

impl Drop for ProxyBody {
    /// hyper drops a body once it is sent, often without polling it to the
    /// end (it stops when `is_end_stream` says so): the connection is
    /// reusable exactly when nothing of the body is left on it.
    fn drop(&mut self) {
        if let Kind::Upstream { body, lease, .. } = &mut self.kind
            && body.is_end_stream()
            && let Some(lease) = lease.take()
        {
            lease.release();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Page(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream { body, guard, lease } => {
                let poll = Pin::new(body).poll_frame(cx);
                match poll {
                    Poll::Ready(None) => {
                        guard.take();
                        if let Some(lease) = lease.take() {
                            lease.release();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        guard.take();
                        // Broken mid-body: never reused.
                        lease.take();
                    }
                    _ => {}
                }
                poll
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Page(data) => data.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Page(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}

/// A plain-text page from the proxy itself.
pub fn page(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::of(Kind::Page(Some(Bytes::from(text)))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// What the proxy answers when it cannot pass a request on.
pub mod pages {
    use super::*;

    /// 308: the same request, at `url` (the method and body are kept).
    pub(crate) fn moved_to(url: &str) -> Response<ProxyBody> {
        let mut resp = page(
            StatusCode::PERMANENT_REDIRECT,
            format!("308 Permanent Redirect\n\nThis site is served at {url}\n"),
        );
        if let Ok(location) = HeaderValue::from_str(url) {
            resp.headers_mut().insert(header::LOCATION, location);
        }
        resp
    }

    pub(crate) fn unknown_host(host: &str) -> Response<ProxyBody> {
        page(
            StatusCode::NOT_FOUND,
            format!("404 Not Found\n\nNo app is served at {host:?} here.\n"),
        )
    }

    pub(crate) fn no_host() -> Response<ProxyBody> {
        page(
            StatusCode::BAD_REQUEST,
            "400 Bad Request\n\nThe request names no host.\n".into(),
        )
    }

    pub(crate) fn unavailable(retry_after: u32) -> Response<ProxyBody> {
        let mut resp = page(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Unavailable\n\nNo instance of this app can take the request right now; try again shortly.\n".into(),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        resp
    }

    pub(crate) fn too_large(limit: u64) -> Response<ProxyBody> {
        page(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "413 Content Too Large\n\nThe request body is over this app's limit of {limit} bytes.\n"
            ),
        )
    }

    pub(crate) fn bad_gateway() -> Response<ProxyBody> {
        page(
            StatusCode::BAD_GATEWAY,
            "502 Bad Gateway\n\nThe app's instance did not answer properly.\n".into(),
        )
    }

    pub(crate) fn gateway_timeout() -> Response<ProxyBody> {
        page(
            StatusCode::GATEWAY_TIMEOUT,
            "504 Gateway Timeout\n\nThe app's instance took too long to answer.\n".into(),
        )
    }
}
