//! The OpenAPI 3.1 document of the service: written by hand in `ingest/openapi.yaml`, embedded at
//! build time, served as YAML (`GET /openapi.yaml`) and JSON (`GET /openapi.json`).

use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::Json;

/// The document as written.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// The document as JSON, parsed once.
pub fn document() -> &'static serde_json::Value {
    static DOCUMENT: LazyLock<serde_json::Value> = LazyLock::new(|| {
        serde_yaml_ng::from_str(OPENAPI_YAML).expect("ingest/openapi.yaml is valid YAML (tested)")
    });
    &DOCUMENT
}

pub async fn openapi_json() -> Json<&'static serde_json::Value> {
    Json(document())
}

pub async fn openapi_yaml() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/yaml")], OPENAPI_YAML)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_parses_and_describes_every_route() {
        let paths = &document()["paths"];
        for path in [
            "/v1/events",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/openapi.yaml",
        ] {
            assert!(paths.get(path).is_some(), "{path} is not documented");
        }
        assert!(document()["openapi"].as_str().unwrap().starts_with("3.1"));
    }
}
