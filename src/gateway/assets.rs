//! The static files the gateway serves, embedded in the binary at build time: an explicit
//! list of (path, content type, bytes), so nothing on disk is served and nothing is
//! fetched at run time. The console (`web/console/`, plain JS without npm imports) is
//! served under `/console/`; the citizen portal and the verify page are the bundle that
//! `web/build.sh` writes to `web/dist/` (committed, so building needs no npm), served
//! under `/portal/`, `/verify/` and `/assets/`. Every text type declares `charset=utf-8`.
//!
//! Not for: anything generated per request (`api`).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

/// (URL path, content type, bytes).
pub const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "/console/",
        "text/html; charset=utf-8",
        include_bytes!("../../web/console/index.html"),
    ),
    (
        "/console/console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/console/console.js"),
    ),
    (
        "/console/console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/console/console.css"),
    ),
    (
        "/portal/",
        "text/html; charset=utf-8",
        include_bytes!("../../web/dist/portal/index.html"),
    ),
    (
        "/verify/",
        "text/html; charset=utf-8",
        include_bytes!("../../web/dist/verify/index.html"),
    ),
    (
        "/assets/portal.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/dist/assets/portal.js"),
    ),
    (
        "/assets/verify.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/dist/assets/verify.js"),
    ),
    (
        "/assets/scan.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/dist/assets/scan.js"),
    ),
    (
        "/assets/style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/dist/assets/style.css"),
    ),
];

/// The asset at `path`, if there is one.
pub fn find(path: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, t, b)| (*t, *b))
}

fn serve(path: &str) -> Response {
    match find(path) {
        Some((content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(
                        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'",
                    ),
                ),
            ],
            bytes,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            "not found",
        )
            .into_response(),
    }
}

/// Routes for every asset, `/` sending the browser to the console.
pub fn router() -> axum::Router {
    axum::Router::new()
        .route(
            "/",
            axum::routing::get(|| async { Redirect::to("/console/") }),
        )
        .route(
            "/console",
            axum::routing::get(|| async { Redirect::to("/console/") }),
        )
        .route(
            "/console/",
            axum::routing::get(|| async { serve("/console/") }),
        )
        .route(
            "/console/{file}",
            axum::routing::get(|Path(file): Path<String>| async move {
                serve(&format!("/console/{file}"))
            }),
        )
        .route(
            "/portal",
            axum::routing::get(|| async { Redirect::to("/portal/") }),
        )
        .route(
            "/portal/",
            axum::routing::get(|| async { serve("/portal/") }),
        )
        .route(
            "/verify",
            axum::routing::get(|| async { Redirect::to("/verify/") }),
        )
        .route(
            "/verify/",
            axum::routing::get(|| async { serve("/verify/") }),
        )
        .route(
            "/assets/{file}",
            axum::routing::get(|Path(file): Path<String>| async move {
                serve(&format!("/assets/{file}"))
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_text_asset_declares_utf8_and_html_declares_it_too() {
        for (path, content_type, bytes) in ASSETS {
            assert!(content_type.ends_with("charset=utf-8"), "{path}");
            assert!(std::str::from_utf8(bytes).is_ok(), "{path} is UTF-8");
            if content_type.starts_with("text/html") {
                let text = std::str::from_utf8(bytes).unwrap();
                assert!(text.contains("<meta charset=\"utf-8\">"), "{path}");
                // The CSP (`default-src 'self'`) refuses inline styles and scripts.
                assert!(!text.contains(" style=\""), "{path} has an inline style");
                assert!(!text.contains("<script>"), "{path} has an inline script");
            }
        }
    }
}
