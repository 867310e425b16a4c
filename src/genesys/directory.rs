//! The org's directory as the REST API lists it: users, queues and queue
//! members, every page walked in order. A listing that fails on any page
//! fails as a whole: a caller never mistakes half a directory for all of it.

use serde::Deserialize;

use super::api::{Api, ApiError};

/// One entity of a listing: all the directory needs is its id.
#[derive(Debug, Clone, Deserialize)]
pub struct Entity {
    pub id: String,
}

/// A page of `UserEntityListing`, `QueueEntityListing` or
/// `QueueMemberEntityListing` (the member listing has no `pageCount`: it is
/// followed by `nextUri`).
#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    entities: Vec<Entity>,
    #[serde(rename = "pageCount", default)]
    page_count: Option<u32>,
    #[serde(rename = "nextUri", default)]
    next_uri: Option<String>,
}

/// A whole listing, and how many requests it took.
#[derive(Debug, Default)]
pub struct Listing {
    pub ids: Vec<String>,
    pub requests: u32,
}

/// No listing is walked further than this many pages (a server that keeps
/// answering `nextUri` must not hold the directory forever).
const MAX_PAGES: u32 = 10_000;

/// What to list.
#[derive(Debug, Clone, Copy)]
pub enum Of<'a> {
    /// `GET /api/v2/users?state=`.
    Users { state: &'a str },
    /// `GET /api/v2/routing/queues?name=&divisionId=`.
    Queues {
        name: &'a str,
        division_ids: &'a [String],
    },
    /// `GET /api/v2/routing/queues/{queueId}/members`.
    Members { queue_id: &'a str },
}

/// Queue members come at most 100 a page.
const MAX_MEMBERS_PAGE: u32 = 100;

/// Lists every page of `of`, `page_size` entities a page.
pub async fn list(api: &Api, of: Of<'_>, page_size: u32) -> Result<Listing, ApiError> {
    let (path, mut query): (String, Vec<(&str, &str)>) = match of {
        Of::Users { state } => ("/api/v2/users".into(), vec![("state", state)]),
        Of::Queues { name, division_ids } => {
            let mut query: Vec<(&str, &str)> = division_ids
                .iter()
                .map(|d| ("divisionId", d.as_str()))
                .collect();
            if !name.is_empty() {
                query.push(("name", name));
            }
            ("/api/v2/routing/queues".into(), query)
        }
        Of::Members { queue_id } => (
            format!("/api/v2/routing/queues/{queue_id}/members"),
            Vec::new(),
        ),
    };
    let page_size = match of {
        Of::Members { .. } => page_size.min(MAX_MEMBERS_PAGE),
        _ => page_size,
    }
    .to_string();
    query.push(("pageSize", &page_size));
    let mut listing = Listing::default();
    for number in 1..=MAX_PAGES {
        let number = number.to_string();
        let mut q = query.clone();
        q.push(("pageNumber", &number));
        let page: Page = api.get_json(&path, &q).await?;
        listing.requests += 1;
        let last = page.entities.is_empty()
            || page.next_uri.is_none()
            || page
                .page_count
                .is_some_and(|count| listing.requests >= count);
        listing.ids.extend(page.entities.into_iter().map(|e| e.id));
        if last {
            break;
        }
    }
    Ok(listing)
}
