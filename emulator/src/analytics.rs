//! `POST /api/v2/analytics/conversations/details/query`: a `ConversationQuery`
//! (the Python SDK's model) over the conversations the truth keeps, answered
//! as an `AnalyticsConversationQueryResponse`.
//!
//! What is served: `interval` (`start/end`, RFC 3339; a conversation
//! matches when it overlaps `[start, end)`, an open one reaching to now),
//! `segmentFilters` and `conversationFilters` (`type` `and`/`or`,
//! `predicates` and `clauses`) with `dimension` predicates on `queueId`,
//! `userId`, `purpose`, `mediaType`, `segmentType` and `conversationId`
//! (operators `matches`, `exists`, `notExists`), `order` and `orderBy`
//! (`conversationStart`, `conversationEnd`), `paging` (`pageSize` at most
//! 100). Anything else a filter asks for is a 400, so a client never takes
//! an unfiltered answer for a filtered one.
//!
//! Our readings where Genesys does not say: a segment filter holds when one
//! segment satisfies it (several segment filters may be satisfied by
//! different segments); a conversation filter on a participant dimension
//! holds when one participant satisfies it; filters in a list are and-ed;
//! a page with no conversation omits `conversations` (as Genesys does for
//! an empty result) and keeps `totalHits`.

use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::time::rfc3339;
use crate::truth::{ParticipantState, Record, Truth};

/// Page size when the query gives none.
const DEFAULT_PAGE: usize = 25;
/// The largest page served.
const MAX_PAGE: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawQuery {
    interval: Option<String>,
    #[serde(default)]
    conversation_filters: Vec<RawFilter>,
    #[serde(default)]
    segment_filters: Vec<RawFilter>,
    order: Option<String>,
    order_by: Option<String>,
    paging: Option<RawPaging>,
}

#[derive(Debug, Deserialize)]
struct RawFilter {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    predicates: Vec<RawPredicate>,
    #[serde(default)]
    clauses: Vec<RawClause>,
}

#[derive(Debug, Deserialize)]
struct RawClause {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    predicates: Vec<RawPredicate>,
}

#[derive(Debug, Deserialize)]
struct RawPredicate {
    #[serde(rename = "type")]
    kind: Option<String>,
    dimension: Option<String>,
    operator: Option<String>,
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPaging {
    page_size: Option<i64>,
    page_number: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dimension {
    QueueId,
    UserId,
    Purpose,
    MediaType,
    SegmentType,
    ConversationId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Matches(String),
    Exists,
    NotExists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Predicate {
    dimension: Dimension,
    op: Op,
}

/// Predicates joined by `and` or `or`; a filter's clauses are groups too.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    all: bool,
    predicates: Vec<Predicate>,
    groups: Vec<Group>,
}

/// A validated query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query {
    start: SystemTime,
    end: SystemTime,
    conversation_filters: Vec<Group>,
    segment_filters: Vec<Group>,
    descending: bool,
    by_end: bool,
    page_size: usize,
    page_number: usize,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// An RFC 3339 time; `Z`, an offset (`+02:00`) or none (UTC).
fn parse_instant(s: &str) -> Result<SystemTime, ApiError> {
    let s = s.trim();
    let err = || bad(format!("Invalid interval time [{s}]"));
    // An offset after the time part: `...T12:00:00.000+02:00`.
    if let Some(t) = s.find('T') {
        let tail = &s[t..];
        if let Some(i) = tail.rfind(['+', '-']) {
            let (clock, offset) = tail.split_at(i);
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let (h, m) = offset[1..].split_once(':').ok_or_else(err)?;
            let (h, m): (u64, u64) = (h.parse().map_err(|_| err())?, m.parse().map_err(|_| err())?);
            let local =
                humantime::parse_rfc3339_weak(&format!("{}{clock}", &s[..t])).map_err(|_| err())?;
            let shift = Duration::from_secs(h * 3600 + m * 60);
            // Local time minus a positive offset is UTC.
            return Ok(if sign > 0 {
                local - shift
            } else {
                local + shift
            });
        }
    }
    humantime::parse_rfc3339_weak(s).map_err(|_| err())
}

fn group(
    kind: Option<&str>,
    predicates: &[RawPredicate],
    groups: Vec<Group>,
) -> Result<Group, ApiError> {
    let all = match kind.unwrap_or("and") {
        "and" => true,
        "or" => false,
        other => return Err(bad(format!("Filter type [{other}] must be and or or"))),
    };
    Ok(Group {
        all,
        predicates: predicates.iter().map(predicate).collect::<Result<_, _>>()?,
        groups,
    })
}

fn predicate(p: &RawPredicate) -> Result<Predicate, ApiError> {
    if let Some(kind) = p.kind.as_deref().filter(|k| *k != "dimension") {
        return Err(bad(format!(
            "Predicate type [{kind}] is not supported by the emulator (dimension only)"
        )));
    }
    let name = p
        .dimension
        .as_deref()
        .ok_or_else(|| bad("A predicate needs a dimension"))?;
    let dimension = match name {
        "queueId" => Dimension::QueueId,
        "userId" => Dimension::UserId,
        "purpose" => Dimension::Purpose,
        "mediaType" => Dimension::MediaType,
        "segmentType" => Dimension::SegmentType,
        "conversationId" => Dimension::ConversationId,
        other => {
            return Err(bad(format!(
                "Dimension [{other}] is not supported by the emulator"
            )))
        }
    };
    let op = match p.operator.as_deref().unwrap_or("matches") {
        "matches" => Op::Matches(
            p.value
                .clone()
                .ok_or_else(|| bad(format!("Predicate on [{name}] needs a value")))?,
        ),
        "exists" => Op::Exists,
        "notExists" => Op::NotExists,
        other => return Err(bad(format!("Operator [{other}] is not valid"))),
    };
    Ok(Predicate { dimension, op })
}

fn filters(raw: &[RawFilter]) -> Result<Vec<Group>, ApiError> {
    raw.iter()
        .map(|f| {
            let clauses = f
                .clauses
                .iter()
                .map(|c| group(c.kind.as_deref(), &c.predicates, Vec::new()))
                .collect::<Result<Vec<_>, _>>()?;
            group(f.kind.as_deref(), &f.predicates, clauses)
        })
        .collect()
}

impl Query {
    /// Parses and validates a request body.
    pub(crate) fn parse(body: &[u8]) -> Result<Query, ApiError> {
        let raw: RawQuery = serde_json::from_slice(body).map_err(|e| {
            bad(format!(
                "The request body is not a valid ConversationQuery: {e}"
            ))
        })?;
        let interval = raw.interval.ok_or_else(|| bad("interval is required"))?;
        let (a, b) = interval
            .split_once('/')
            .ok_or_else(|| bad(format!("Invalid interval [{interval}]: expected start/end")))?;
        let (start, end) = (parse_instant(a)?, parse_instant(b)?);
        if end <= start {
            return Err(bad(format!(
                "Invalid interval [{interval}]: end is not after start"
            )));
        }
        let descending = match raw.order.as_deref() {
            None | Some("asc") | Some("unordered") => false,
            Some("desc") => true,
            Some(other) => {
                return Err(bad(format!(
                    "order [{other}] must be asc, desc or unordered"
                )))
            }
        };
        let by_end = match raw.order_by.as_deref() {
            None | Some("conversationStart") | Some("segmentStart") => false,
            Some("conversationEnd") | Some("segmentEnd") => true,
            Some(other) => return Err(bad(format!("orderBy [{other}] is not valid"))),
        };
        let (size, number) = raw
            .paging
            .map_or((None, None), |p| (p.page_size, p.page_number));
        let page_size = size.unwrap_or(DEFAULT_PAGE as i64);
        let page_number = number.unwrap_or(1);
        if !(1..=MAX_PAGE as i64).contains(&page_size) {
            return Err(bad(format!(
                "pageSize [{page_size}] must be between 1 and {MAX_PAGE}"
            )));
        }
        if page_number < 1 {
            return Err(bad(format!(
                "pageNumber [{page_number}] must be at least 1"
            )));
        }
        Ok(Query {
            start,
            end,
            conversation_filters: filters(&raw.conversation_filters)?,
            segment_filters: filters(&raw.segment_filters)?,
            descending,
            by_end,
            page_size: page_size as usize,
            page_number: page_number as usize,
        })
    }

    fn overlaps(&self, r: &Record) -> bool {
        r.start < self.end && r.end.is_none_or(|e| e >= self.start)
    }

    fn matches(&self, r: &Record) -> bool {
        self.overlaps(r)
            && self
                .conversation_filters
                .iter()
                .all(|g| holds(g, &|p| values(p.dimension, r, &r.participants)))
            && self.segment_filters.iter().all(|g| {
                // One segment per participant (see `conversation_json`).
                r.participants
                    .iter()
                    .any(|seg| holds(g, &|p| values(p.dimension, r, std::slice::from_ref(seg))))
            })
    }

    /// The reply: an `AnalyticsConversationQueryResponse`.
    pub(crate) fn run(&self, truth: &Truth) -> Value {
        let mut hits: Vec<&Record> = truth.records().filter(|r| self.matches(r)).collect();
        // By end, open conversations come after every ended one.
        let key = |r: &Record| match (self.by_end, r.end) {
            (true, Some(end)) => (false, end),
            (true, None) => (true, r.start),
            (false, _) => (false, r.start),
        };
        hits.sort_by(|a, b| key(a).cmp(&key(b)).then_with(|| a.id.cmp(&b.id)));
        if self.descending {
            hits.reverse();
        }
        let from = (self.page_number - 1)
            .saturating_mul(self.page_size)
            .min(hits.len());
        let to = from.saturating_add(self.page_size).min(hits.len());
        let page: Vec<Value> = hits[from..to]
            .iter()
            .map(|r| conversation_json(r))
            .collect();
        let mut v = json!({ "totalHits": hits.len() });
        if !page.is_empty() {
            v["conversations"] = Value::Array(page);
        }
        v
    }
}

/// A predicate's candidate values over `participants` of `r`: it holds for
/// `matches` when one equals the value, for `exists` when one is present,
/// for `notExists` when none is.
fn values<'a>(
    d: Dimension,
    r: &'a Record,
    participants: &'a [ParticipantState],
) -> Vec<Option<&'a str>> {
    if d == Dimension::ConversationId {
        return vec![Some(r.id.as_str())];
    }
    participants
        .iter()
        .map(|p| match d {
            Dimension::QueueId => p.queue_id.as_deref(),
            Dimension::UserId => p.user_id.as_deref(),
            Dimension::Purpose => Some(p.purpose.as_str()),
            Dimension::MediaType => p.media_type.as_deref(),
            Dimension::SegmentType => Some(SEGMENT_TYPE),
            Dimension::ConversationId => Some(r.id.as_str()),
        })
        .collect()
}

fn holds<'a>(g: &Group, values: &dyn Fn(&Predicate) -> Vec<Option<&'a str>>) -> bool {
    let one = |p: &Predicate| {
        let vs = values(p);
        match &p.op {
            Op::Matches(want) => vs.contains(&Some(want.as_str())),
            Op::Exists => vs.iter().any(Option::is_some),
            Op::NotExists => vs.iter().all(Option::is_none),
        }
    };
    let mut results = g
        .predicates
        .iter()
        .map(one)
        .chain(g.groups.iter().map(|c| holds(c, values)));
    if g.all {
        results.all(|b| b)
    } else {
        results.any(|b| b)
    }
}

/// Every participant's one segment: the emulator's events show legs, not
/// their phases (alert, hold, wrap-up).
const SEGMENT_TYPE: &str = "interact";

/// One `AnalyticsConversationWithoutAttributes`.
fn conversation_json(r: &Record) -> Value {
    let participants: Vec<Value> = r
        .participants
        .iter()
        .map(|p| {
            let mut segment = json!({
                "segmentStart": rfc3339(p.start.unwrap_or(r.start)),
                "segmentType": SEGMENT_TYPE,
            });
            if let Some(end) = p.end {
                segment["segmentEnd"] = json!(rfc3339(end));
            }
            if let Some(q) = &p.queue_id {
                segment["queueId"] = json!(q);
            }
            let mut session = json!({
                "direction": "inbound",
                "segments": [segment],
            });
            if let Some(m) = &p.media_type {
                session["mediaType"] = json!(m);
            }
            let mut participant = json!({
                "participantId": p.id,
                "sessions": [session],
            });
            if !p.purpose.is_empty() {
                participant["purpose"] = json!(p.purpose);
            }
            if let Some(u) = &p.user_id {
                participant["userId"] = json!(u);
            }
            participant
        })
        .collect();
    let mut v = json!({
        "conversationId": r.id,
        "conversationStart": rfc3339(r.start),
        "originatingDirection": "inbound",
        "participants": participants,
    });
    if let Some(end) = r.end {
        v["conversationEnd"] = json!(rfc3339(end));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn q(v: Value) -> Result<Query, ApiError> {
        Query::parse(v.to_string().as_bytes())
    }

    #[test]
    fn intervals_parse_with_zones_and_must_move_forward() {
        let t = parse_instant("2024-05-01T12:00:00.000Z").expect("Z");
        assert_eq!(
            parse_instant("2024-05-01T14:00:00+02:00").expect("offset"),
            t
        );
        assert_eq!(
            parse_instant("2024-05-01T07:00:00.000-05:00").expect("offset"),
            t
        );
        assert_eq!(parse_instant("2024-05-01T12:00:00").expect("none"), t);
        assert!(q(json!({"interval": "2024-05-01T12:00:00Z"})).is_err());
        assert!(q(json!({"interval": "2024-05-02T00:00:00Z/2024-05-01T00:00:00Z"})).is_err());
        assert!(q(json!({})).is_err());
        let ok = q(json!({"interval": "2024-05-01T00:00:00Z/2024-05-02T00:00:00Z"})).expect("ok");
        assert_eq!(ok.start, UNIX_EPOCH + Duration::from_secs(1_714_521_600));
        assert_eq!((ok.page_size, ok.page_number), (DEFAULT_PAGE, 1));
    }

    #[test]
    fn unsupported_filters_are_refused() {
        let i = "2024-05-01T00:00:00Z/2024-05-02T00:00:00Z";
        let with = |f: Value| q(json!({"interval": i, "segmentFilters": [f]}));
        assert!(with(
            json!({"type": "and", "predicates": [{"dimension": "queueId", "value": "q"}]})
        )
        .is_ok());
        assert!(
            with(json!({"type": "and", "predicates": [{"dimension": "ani", "value": "x"}]}))
                .is_err()
        );
        assert!(with(json!({"type": "xor", "predicates": []})).is_err());
        assert!(with(json!({"type": "and", "predicates": [{"dimension": "queueId"}]})).is_err());
        assert!(with(json!({"type": "and", "predicates": [{"type": "metric", "dimension": "queueId", "value": "q"}]})).is_err());
        assert!(q(json!({"interval": i, "paging": {"pageSize": 101}})).is_err());
        assert!(q(json!({"interval": i, "paging": {"pageNumber": 0}})).is_err());
        assert!(q(json!({"interval": i, "order": "sideways"})).is_err());
    }
}
