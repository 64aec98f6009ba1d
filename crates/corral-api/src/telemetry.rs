//! `GET /api/config` (Daytona's `DaytonaConfiguration`, public as Daytona's is) and a
//! sandbox's telemetry: `GET /api/sandbox/{id}/telemetry/metrics` answers the metrics
//! history ([`corral_engine::telemetry`]); logs and traces are refused by name.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use corral_engine::telemetry::{Metric, Value};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ApiError;
use crate::extract::QueryPairs;
use crate::sandboxes::parse_instant;
use crate::state::AppState;

/// Daytona's `OidcConfig`: corral has no OIDC provider, so every field is empty.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub audience: String,
    pub provider: String,
}

/// Daytona's `DaytonaConfiguration`, with corral's values: no dashboard, analytics, billing,
/// OIDC or PostHog (their URLs empty or absent), so the SDKs read metrics from
/// `/sandbox/{id}/telemetry/metrics`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    pub version: &'static str,
    pub oidc: OidcConfig,
    pub linked_accounts_enabled: bool,
    pub announcements: serde_json::Map<String, serde_json::Value>,
    pub proxy_template_url: String,
    pub proxy_toolbox_url: String,
    pub default_snapshot: &'static str,
    pub dashboard_url: String,
    pub max_auto_archive_interval: i64,
    pub maintanance_mode: bool,
    pub environment: &'static str,
}

/// `GET /api/config`: no key needed (Daytona's is public too).
pub async fn config(State(state): State<AppState>, headers: HeaderMap) -> Json<Configuration> {
    Json(Configuration {
        version: env!("CARGO_PKG_VERSION"),
        oidc: OidcConfig {
            issuer: String::new(),
            client_id: String::new(),
            audience: String::new(),
            provider: String::new(),
        },
        linked_accounts_enabled: false,
        announcements: serde_json::Map::new(),
        proxy_template_url: crate::preview::preview_template(&state, &headers),
        proxy_toolbox_url: state.toolbox_url(&headers),
        default_snapshot: corral_engine::DEFAULT_SNAPSHOT,
        dashboard_url: String::new(),
        max_auto_archive_interval: corral_engine::reconciler::MAX_AUTO_ARCHIVE_MINUTES,
        maintanance_mode: false,
        environment: "corral",
    })
}

/// Daytona's `MetricDataPoint`.
#[derive(Debug, Serialize)]
pub struct DataPoint {
    pub timestamp: String,
    pub value: serde_json::Number,
}

/// Daytona's `MetricSeries`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricSeries {
    pub metric_name: &'static str,
    pub data_points: Vec<DataPoint>,
}

/// Daytona's `MetricsResponse`.
#[derive(Debug, Serialize)]
pub struct MetricsResponse {
    pub series: Vec<MetricSeries>,
}

const METRIC_PARAMS: &[&str] = &["from", "to", "metricNames"];

/// `GET /api/sandbox/{idOrName}/telemetry/metrics?from=&to=&metricNames=`: the sandbox's
/// sampled figures between `from` and `to` (RFC 3339 or the SDK's `%z` form), for the named
/// metrics (repeated, or comma-separated; all when absent).
pub async fn metrics(
    State(state): State<AppState>,
    Path(id_or_name): Path<String>,
    query: QueryPairs,
) -> Result<Json<MetricsResponse>, ApiError> {
    let (from, to, wanted) = match parse_metrics_query(&query) {
        Ok(q) => q,
        Err(e) => {
            // An unknown sandbox is a 404 whatever the query.
            crate::sandboxes::find(&state, &id_or_name).await?;
            return Err(e);
        }
    };
    let series = corral_engine::telemetry::metrics(&state, &id_or_name, from, to, &wanted).await?;
    Ok(Json(MetricsResponse {
        series: series
            .into_iter()
            .map(|s| MetricSeries {
                metric_name: s.metric.name(),
                data_points: s
                    .points
                    .into_iter()
                    .filter_map(|(t, v)| {
                        Some(DataPoint {
                            timestamp: timestamp(t)?,
                            value: match v {
                                Value::Int(i) => i.into(),
                                Value::Float(f) => serde_json::Number::from_f64(f)?,
                            },
                        })
                    })
                    .collect(),
            })
            .collect(),
    }))
}

type MetricsQuery = (OffsetDateTime, OffsetDateTime, Vec<Metric>);

fn parse_metrics_query(query: &QueryPairs) -> Result<MetricsQuery, ApiError> {
    if let Some((k, _)) = query
        .0
        .iter()
        .find(|(k, _)| !METRIC_PARAMS.contains(&k.as_str()) && k.as_str() != "metricNames[]")
    {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {k:?}: use from, to and metricNames"
        )));
    }
    let instant = |key: &str| -> Result<OffsetDateTime, ApiError> {
        let raw = query
            .get(key)
            .ok_or_else(|| ApiError::bad_request(format!("{key} is required (RFC 3339)")))?;
        parse_instant(key, raw)
    };
    let (from, to) = (instant("from")?, instant("to")?);
    let mut wanted = Vec::new();
    let mut unknown = Vec::new();
    for name in query
        .all("metricNames")
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        match Metric::parse(name) {
            Some(m) if !wanted.contains(&m) => wanted.push(m),
            Some(_) => {}
            None => unknown.push(name),
        }
    }
    if !unknown.is_empty() {
        let known: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        return Err(ApiError::bad_request(format!(
            "unknown metric names: {}; known: {}",
            unknown.join(", "),
            known.join(", ")
        )));
    }
    if from > to {
        return Err(ApiError::bad_request(format!(
            "from ({}) is after to ({})",
            query.get("from").unwrap_or_default(),
            query.get("to").unwrap_or_default()
        )));
    }
    Ok((from, to, wanted))
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds (one string per sample, so the
/// SDKs group a sample's metrics by it).
fn timestamp(ms: u64) -> Option<String> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    let t = t.replace_nanosecond((ms % 1000) as u32 * 1_000_000).ok()?;
    t.format(&Rfc3339).ok()
}

/// `GET /api/sandbox/{id}/telemetry/logs`, `.../traces`, `.../traces/{traceId}`: corral
/// collects no OpenTelemetry logs or traces from sandboxes.
pub async fn not_collected(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
) -> ApiError {
    let id = params.first().map(|(_, v)| v.as_str()).unwrap_or_default();
    if let Err(e) = crate::sandboxes::find(&state, id).await {
        return e.into();
    }
    ApiError::bad_request(
        "this server collects no OpenTelemetry logs or traces from sandboxes; only metrics \
         (GET /api/sandbox/{id}/telemetry/metrics, the SDKs' get_metrics)",
    )
    .with_code("TELEMETRY_NOT_SUPPORTED")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(
            timestamp(1_700_000_000_123).as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(
            timestamp(1_700_000_000_000).as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
    }
}
