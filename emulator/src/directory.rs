//! The directory: users, queues and queue memberships, as
//! `GET /api/v2/users`, `GET /api/v2/routing/queues` and
//! `GET /api/v2/routing/queues/{id}/members` show them (the Python SDK's
//! `UserEntityListing`, `QueueEntityListing` and `QueueMemberEntityListing`),
//! and the rules that change it at run time.
//!
//! It is built from the config's id pools at start and lives inside the
//! state (under its lock), so that a change and the generator's fence move
//! together: [`Directory::version`] is bumped by every change that makes an
//! entity appear or disappear, and a generator batch built under an older
//! version is not published. [`Directory::fires`] is the generator's
//! existence check: one hash lookup per topic, done only when the
//! subscriptions or the directory change, never per event.
//!
//! Paging follows Genesys: `pageSize` and `pageNumber` from 1, links as
//! relative URIs that repeat the filters. Users come in creation order,
//! queues and members sorted by name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::config::{is_topic_safe_id, Config, Division};
use crate::time::{rfc3339, ser_time};

/// `GET /api/v2/users` page size when none is asked for.
pub(crate) const USERS_DEFAULT_PAGE: usize = 25;
/// The largest page `GET /api/v2/users` and `GET /api/v2/routing/queues`
/// serve.
pub(crate) const USERS_MAX_PAGE: usize = 500;
/// The largest page of queue members (the SDK: "Max value is 100").
pub(crate) const MEMBERS_MAX_PAGE: usize = 100;

/// Queue names at start: a word in turn, then the queue's number.
const QUEUE_WORDS: &[&str] = &["Sales", "Support", "Billing", "Retention", "Technical"];

/// A user's state, as the `User` model spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UserState {
    /// Listed by default; the only state whose topics the generator fires.
    #[default]
    Active,
    /// Listed with `state=inactive`.
    Inactive,
    /// Listed with `state=deleted`.
    Deleted,
}

impl UserState {
    fn as_str(self) -> &'static str {
        match self {
            UserState::Active => "active",
            UserState::Inactive => "inactive",
            UserState::Deleted => "deleted",
        }
    }
}

/// A user to add; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewUser {
    /// Id (default: a fresh UUID). Must be usable in a topic name.
    pub id: Option<String>,
    /// Display name (default: `Agent NNNN`, the next number).
    pub name: Option<String>,
    /// Email (default: derived from the name).
    pub email: Option<String>,
    /// Division id (default: the first division).
    pub division_id: Option<String>,
    /// State (default: active).
    pub state: UserState,
    /// Queues the user joins (they must exist).
    pub queues: Vec<String>,
}

/// A queue to add; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewQueue {
    /// Id (default: a fresh UUID). Must be usable in a topic name.
    pub id: Option<String>,
    /// Name (default: `Queue NNN`, the next number).
    pub name: Option<String>,
    /// Division id (default: the first division).
    pub division_id: Option<String>,
    /// Member user ids (they must exist).
    pub members: Vec<String>,
}

/// One user, as [`crate::Emulator::directory`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    /// User id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Email.
    pub email: String,
    /// State.
    pub state: UserState,
    /// Division id.
    pub division_id: String,
    /// Bumped by every change of the user.
    pub version: u64,
    /// Queues the user is a member of, in queue creation order.
    pub queues: Vec<String>,
}

/// One queue, as [`crate::Emulator::directory`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueInfo {
    /// Queue id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Division id.
    pub division_id: String,
    /// Member user ids in the order they joined (any state).
    pub members: Vec<String>,
    /// When the queue was created.
    #[serde(serialize_with = "ser_time")]
    pub date_created: SystemTime,
}

/// The whole directory at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectorySnapshot {
    /// Every division.
    pub divisions: Vec<Division>,
    /// Every user (any state), in creation order.
    pub users: Vec<UserInfo>,
    /// Every queue, in creation order.
    pub queues: Vec<QueueInfo>,
}

/// Why a directory change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// No user has this id.
    #[error("no user with id {0}")]
    UnknownUser(String),
    /// No queue has this id.
    #[error("no queue with id {0}")]
    UnknownQueue(String),
    /// No division has this id.
    #[error("no division with id {0}")]
    UnknownDivision(String),
    /// A user or queue already has this id.
    #[error("id {0} is already taken")]
    DuplicateId(String),
    /// The id cannot stand in a topic name.
    #[error("id {0:?} must not be empty nor contain '.', '?', '&' or whitespace")]
    BadId(String),
}

struct User {
    id: String,
    name: String,
    email: String,
    state: UserState,
    /// Index into the divisions.
    division: usize,
    version: u64,
}

struct Queue {
    id: String,
    name: String,
    division: usize,
    created: SystemTime,
    modified: SystemTime,
    /// User ids, in the order they joined, without repeats.
    members: Vec<String>,
}

/// Rows by id that keep their insertion order (for stable paging).
struct Table<T> {
    rows: BTreeMap<u64, T>,
    index: HashMap<String, u64>,
    next: u64,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            rows: BTreeMap::new(),
            index: HashMap::new(),
            next: 0,
        }
    }
}

impl<T> Table<T> {
    fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    fn get(&self, id: &str) -> Option<&T> {
        self.index.get(id).and_then(|k| self.rows.get(k))
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        let k = self.index.get(id)?;
        self.rows.get_mut(k)
    }

    fn insert(&mut self, id: String, row: T) {
        let k = self.next;
        self.next += 1;
        self.index.insert(id, k);
        self.rows.insert(k, row);
    }

    fn remove(&mut self, id: &str) -> Option<T> {
        let k = self.index.remove(id)?;
        self.rows.remove(&k)
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.rows.values()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.rows.values_mut()
    }
}

/// What a topic's `{id}` names, when it names a directory entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entity<'a> {
    User(&'a str),
    Queue(&'a str),
}

/// The user or queue a topic is about (`v2.users.{id}...`,
/// `v2.routing.queues.{id}...`, `v2.analytics.queues.{id}...`); `None` for
/// conversation-scoped and system topics.
pub(crate) fn entity_of(topic: &str) -> Option<Entity<'_>> {
    let id_after = |prefix: &str| {
        topic
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('.').next())
            .filter(|id| !id.is_empty())
    };
    if let Some(id) = id_after("v2.users.") {
        return Some(Entity::User(id));
    }
    id_after("v2.routing.queues.")
        .or_else(|| id_after("v2.analytics.queues."))
        .map(Entity::Queue)
}

/// The directory. See the module docs.
pub(crate) struct Directory {
    divisions: Vec<Division>,
    users: Table<User>,
    queues: Table<Queue>,
    /// Bumped by every change that makes a user or queue appear, disappear,
    /// or a user's state change: the generator's fence.
    pub version: u64,
    /// Numbers for default names (`Agent 0051`, `Queue 011`).
    users_named: usize,
    queues_named: usize,
}

impl Default for Directory {
    /// Empty, with one division (for state unit tests).
    fn default() -> Self {
        Directory::from_config(&Config {
            user_ids: Vec::new(),
            queue_ids: Vec::new(),
            divisions: vec![Division::new("Home")],
            ..Config::default()
        })
    }
}

impl Directory {
    /// The directory at start: every pool user active and in 1-2 queues,
    /// users and queues spread over the divisions in turn.
    pub(crate) fn from_config(cfg: &Config) -> Directory {
        let mut d = Directory {
            divisions: cfg.divisions.clone(),
            users: Table::default(),
            queues: Table::default(),
            version: 0,
            users_named: 0,
            queues_named: 0,
        };
        let ndiv = d.divisions.len().max(1);
        let now = SystemTime::now();
        for (j, id) in cfg.queue_ids.iter().enumerate() {
            d.queues_named += 1;
            if d.queues.contains(id) {
                continue;
            }
            let name = format!("{} {:03}", QUEUE_WORDS[j % QUEUE_WORDS.len()], j + 1);
            d.queues.insert(
                id.clone(),
                Queue {
                    id: id.clone(),
                    name,
                    division: j % ndiv,
                    created: now,
                    modified: now,
                    members: Vec::new(),
                },
            );
        }
        let queue_ids: Vec<String> = d.queues.iter().map(|q| q.id.clone()).collect();
        for (i, id) in cfg.user_ids.iter().enumerate() {
            d.users_named += 1;
            if d.users.contains(id) {
                continue;
            }
            let name = format!("Agent {:04}", i + 1);
            d.users.insert(
                id.clone(),
                User {
                    id: id.clone(),
                    email: email_for(&name),
                    name,
                    state: UserState::Active,
                    division: i % ndiv,
                    version: 1,
                },
            );
            if queue_ids.is_empty() {
                continue;
            }
            let mut joins = vec![i % queue_ids.len()];
            if i % 2 == 1 && queue_ids.len() > 1 {
                joins.push((i + 1) % queue_ids.len());
            }
            for q in joins {
                if let Some(queue) = d.queues.get_mut(&queue_ids[q]) {
                    queue.members.push(id.clone());
                }
            }
        }
        d
    }

    /// Whether the generator may publish on `topic`: a user topic needs an
    /// active user, a queue topic an existing queue; other topics always.
    pub(crate) fn fires(&self, topic: &str) -> bool {
        match entity_of(topic) {
            None => true,
            Some(Entity::User(id)) => self
                .users
                .get(id)
                .is_some_and(|u| u.state == UserState::Active),
            Some(Entity::Queue(id)) => self.queues.contains(id),
        }
    }

    /// Active user ids, in creation order.
    pub(crate) fn active_user_ids(&self) -> Vec<String> {
        self.users
            .iter()
            .filter(|u| u.state == UserState::Active)
            .map(|u| u.id.clone())
            .collect()
    }

    /// Every user id (any state), in creation order.
    pub(crate) fn user_ids(&self) -> Vec<String> {
        self.users.iter().map(|u| u.id.clone()).collect()
    }

    /// Queue ids, in creation order.
    pub(crate) fn queue_ids(&self) -> Vec<String> {
        self.queues.iter().map(|q| q.id.clone()).collect()
    }

    // ---- changes --------------------------------------------------------

    fn division_index(&self, id: Option<&str>) -> Result<usize, DirectoryError> {
        match id {
            None => Ok(0),
            Some(id) => self
                .divisions
                .iter()
                .position(|d| d.id == id)
                .ok_or_else(|| DirectoryError::UnknownDivision(id.to_owned())),
        }
    }

    fn fresh_id(&self, id: Option<String>) -> Result<String, DirectoryError> {
        let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if !is_topic_safe_id(&id) {
            return Err(DirectoryError::BadId(id));
        }
        if self.users.contains(&id) || self.queues.contains(&id) {
            return Err(DirectoryError::DuplicateId(id));
        }
        Ok(id)
    }

    pub(crate) fn add_user(&mut self, new: NewUser) -> Result<String, DirectoryError> {
        let id = self.fresh_id(new.id)?;
        let division = self.division_index(new.division_id.as_deref())?;
        if let Some(q) = new.queues.iter().find(|q| !self.queues.contains(q)) {
            return Err(DirectoryError::UnknownQueue(q.clone()));
        }
        let name = new.name.unwrap_or_else(|| {
            self.users_named += 1;
            format!("Agent {:04}", self.users_named)
        });
        let email = new.email.unwrap_or_else(|| email_for(&name));
        self.users.insert(
            id.clone(),
            User {
                id: id.clone(),
                name,
                email,
                state: new.state,
                division,
                version: 1,
            },
        );
        let now = SystemTime::now();
        for q in &new.queues {
            if let Some(queue) = self.queues.get_mut(q) {
                if !queue.members.contains(&id) {
                    queue.members.push(id.clone());
                    queue.modified = now;
                }
            }
        }
        self.version += 1;
        Ok(id)
    }

    pub(crate) fn set_user_state(
        &mut self,
        id: &str,
        state: UserState,
    ) -> Result<(), DirectoryError> {
        let user = self
            .users
            .get_mut(id)
            .ok_or_else(|| DirectoryError::UnknownUser(id.to_owned()))?;
        if user.state != state {
            user.state = state;
            user.version += 1;
            self.version += 1;
        }
        Ok(())
    }

    /// Removes the user and its memberships.
    pub(crate) fn remove_user(&mut self, id: &str) -> Result<(), DirectoryError> {
        self.users
            .remove(id)
            .ok_or_else(|| DirectoryError::UnknownUser(id.to_owned()))?;
        let now = SystemTime::now();
        for q in self.queues.iter_mut() {
            let before = q.members.len();
            q.members.retain(|m| m != id);
            if q.members.len() != before {
                q.modified = now;
            }
        }
        self.version += 1;
        Ok(())
    }

    pub(crate) fn add_queue(&mut self, new: NewQueue) -> Result<String, DirectoryError> {
        let id = self.fresh_id(new.id)?;
        let division = self.division_index(new.division_id.as_deref())?;
        let members = self.checked_members(&new.members)?;
        let name = new.name.unwrap_or_else(|| {
            self.queues_named += 1;
            format!("Queue {:03}", self.queues_named)
        });
        let now = SystemTime::now();
        self.queues.insert(
            id.clone(),
            Queue {
                id: id.clone(),
                name,
                division,
                created: now,
                modified: now,
                members,
            },
        );
        self.version += 1;
        Ok(id)
    }

    pub(crate) fn remove_queue(&mut self, id: &str) -> Result<(), DirectoryError> {
        self.queues
            .remove(id)
            .ok_or_else(|| DirectoryError::UnknownQueue(id.to_owned()))?;
        self.version += 1;
        Ok(())
    }

    pub(crate) fn set_queue_members(
        &mut self,
        id: &str,
        members: &[String],
    ) -> Result<(), DirectoryError> {
        if !self.queues.contains(id) {
            return Err(DirectoryError::UnknownQueue(id.to_owned()));
        }
        let members = self.checked_members(members)?;
        if let Some(q) = self.queues.get_mut(id) {
            q.members = members;
            q.modified = SystemTime::now();
        }
        Ok(())
    }

    /// `ids` without repeats, once every one is a known user.
    fn checked_members(&self, ids: &[String]) -> Result<Vec<String>, DirectoryError> {
        if let Some(u) = ids.iter().find(|u| !self.users.contains(u)) {
            return Err(DirectoryError::UnknownUser(u.clone()));
        }
        let mut seen = HashSet::new();
        Ok(ids
            .iter()
            .filter(|u| seen.insert(u.as_str()))
            .cloned()
            .collect())
    }

    pub(crate) fn snapshot(&self) -> DirectorySnapshot {
        let mut memberships: HashMap<&str, Vec<String>> = HashMap::new();
        for q in self.queues.iter() {
            for m in &q.members {
                memberships.entry(m).or_default().push(q.id.clone());
            }
        }
        DirectorySnapshot {
            divisions: self.divisions.clone(),
            users: self
                .users
                .iter()
                .map(|u| UserInfo {
                    id: u.id.clone(),
                    name: u.name.clone(),
                    email: u.email.clone(),
                    state: u.state,
                    division_id: self.divisions[u.division].id.clone(),
                    version: u.version,
                    queues: memberships.get(u.id.as_str()).cloned().unwrap_or_default(),
                })
                .collect(),
            queues: self
                .queues
                .iter()
                .map(|q| QueueInfo {
                    id: q.id.clone(),
                    name: q.name.clone(),
                    division_id: self.divisions[q.division].id.clone(),
                    members: q.members.clone(),
                    date_created: q.created,
                })
                .collect(),
        }
    }

    // ---- REST ---------------------------------------------------------------

    fn division_json(&self, i: usize) -> Value {
        let d = &self.divisions[i];
        json!({
            "id": d.id,
            "name": d.name,
            "selfUri": format!("/api/v2/authorization/divisions/{}", d.id),
        })
    }

    fn user_json(&self, u: &User) -> Value {
        json!({
            "id": u.id,
            "name": u.name,
            "division": self.division_json(u.division),
            "email": u.email,
            "state": u.state.as_str(),
            "username": u.email,
            "version": u.version,
            "acdAutoAnswer": false,
            "selfUri": format!("/api/v2/users/{}", u.id),
        })
    }

    /// Members the members endpoint lists: active users, sorted by name.
    fn listed_members(&self, q: &Queue) -> Vec<&User> {
        let mut users: Vec<&User> = q
            .members
            .iter()
            .filter_map(|m| self.users.get(m))
            .filter(|u| u.state == UserState::Active)
            .collect();
        users.sort_by(|a, b| by_name(&a.name, &a.id, &b.name, &b.id));
        users
    }

    fn queue_json(&self, q: &Queue) -> Value {
        // The members the members endpoint lists, counted without sorting.
        let members = q
            .members
            .iter()
            .filter(|m| {
                self.users
                    .get(m)
                    .is_some_and(|u| u.state == UserState::Active)
            })
            .count();
        json!({
            "id": q.id,
            "name": q.name,
            "division": self.division_json(q.division),
            "dateCreated": rfc3339(q.created),
            "dateModified": rfc3339(q.modified),
            "memberCount": members,
            "userMemberCount": members,
            "joinedMemberCount": members,
            "skillEvaluationMethod": "ALL",
            "scoringMethod": "TimestampAndPriority",
            "autoAnswerOnly": false,
            "enableTranscription": false,
            "enableManualAssignment": false,
            "selfUri": format!("/api/v2/routing/queues/{}", q.id),
        })
    }

    /// `GET /api/v2/users`: a `UserEntityListing`.
    pub(crate) fn users_page(&self, q: &[(String, String)]) -> Result<Value, ApiError> {
        let page = Page::parse(q, USERS_DEFAULT_PAGE, USERS_MAX_PAGE)?;
        let state = match param(q, "state").map(str::to_ascii_lowercase).as_deref() {
            None | Some("active") => Some(UserState::Active),
            Some("inactive") => Some(UserState::Inactive),
            Some("deleted") => Some(UserState::Deleted),
            Some("any") => None,
            Some(other) => {
                let msg = format!("Value [{other}] for field [state] is not valid");
                return Err(ApiError::BadRequest(msg));
            }
        };
        let ids = list_param(q, "id");
        let matching: Vec<&User> = self
            .users
            .iter()
            .filter(|u| state.is_none_or(|s| u.state == s))
            .filter(|u| ids.is_empty() || ids.contains(&u.id.as_str()))
            .collect();
        let mut filters = vec![("state", state.map_or("any", UserState::as_str).to_owned())];
        if !ids.is_empty() {
            filters.push(("id", ids.join(",")));
        }
        let entities = page
            .slice(&matching)
            .iter()
            .map(|u| self.user_json(u))
            .collect();
        Ok(page.listing("/api/v2/users", &filters, entities, Some(matching.len())))
    }

    /// `GET /api/v2/routing/queues`: a `QueueEntityListing`.
    pub(crate) fn queues_page(&self, q: &[(String, String)]) -> Result<Value, ApiError> {
        let page = Page::parse(q, USERS_DEFAULT_PAGE, USERS_MAX_PAGE)?;
        let name = param(q, "name").filter(|n| !n.is_empty());
        let divisions = list_param(q, "divisionId");
        let ids = list_param(q, "id");
        let descending = param(q, "sortOrder").is_some_and(|s| s.eq_ignore_ascii_case("desc"));
        let mut matching: Vec<&Queue> = self
            .queues
            .iter()
            .filter(|queue| name.is_none_or(|n| name_matches(n, &queue.name)))
            .filter(|queue| {
                divisions.is_empty()
                    || divisions.contains(&self.divisions[queue.division].id.as_str())
            })
            .filter(|queue| ids.is_empty() || ids.contains(&queue.id.as_str()))
            .collect();
        matching.sort_by(|a, b| by_name(&a.name, &a.id, &b.name, &b.id));
        if descending {
            matching.reverse();
        }
        let mut filters = Vec::new();
        if let Some(n) = name {
            filters.push(("name", n.to_owned()));
        }
        if !ids.is_empty() {
            filters.push(("id", ids.join(",")));
        }
        if !divisions.is_empty() {
            filters.push(("divisionId", divisions.join(",")));
        }
        if descending {
            filters.push(("sortOrder", "desc".to_owned()));
        }
        let entities = page
            .slice(&matching)
            .iter()
            .map(|queue| self.queue_json(queue))
            .collect();
        Ok(page.listing(
            "/api/v2/routing/queues",
            &filters,
            entities,
            Some(matching.len()),
        ))
    }

    /// `GET /api/v2/routing/queues/{id}/members`: a
    /// `QueueMemberEntityListing` (no `total`, no `pageCount`: the SDK model
    /// has neither; clients follow `nextUri`).
    pub(crate) fn members_page(
        &self,
        queue_id: &str,
        q: &[(String, String)],
    ) -> Result<Value, ApiError> {
        let queue = self.queues.get(queue_id).ok_or_else(|| {
            ApiError::NotFound(format!("Queue with id {queue_id} was not found."))
        })?;
        let page = Page::parse(q, USERS_DEFAULT_PAGE, MEMBERS_MAX_PAGE)?;
        let members = self.listed_members(queue);
        let entities: Vec<Value> = page
            .slice(&members)
            .iter()
            .map(|u| {
                json!({
                    "id": u.id,
                    "name": u.name,
                    "user": self.user_json(u),
                    "ringNumber": 1,
                    "joined": true,
                    "memberBy": "user",
                    "selfUri": format!("/api/v2/routing/queues/{queue_id}/members/{}", u.id),
                })
            })
            .collect();
        let path = format!("/api/v2/routing/queues/{queue_id}/members");
        let mut v = page.listing(&path, &[], entities, None);
        if page.number * page.size < members.len() {
            v["nextUri"] = json!(page.uri(&path, &[], page.number + 1));
        }
        Ok(v)
    }
}

fn email_for(name: &str) -> String {
    let local: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("{local}@example.com")
}

fn by_name(an: &str, aid: &str, bn: &str, bid: &str) -> std::cmp::Ordering {
    an.to_lowercase()
        .cmp(&bn.to_lowercase())
        .then_with(|| aid.cmp(bid))
}

/// `name` filter of the queue listing: case-insensitive, with a leading
/// and/or trailing `*` as wildcards; without one, the whole name.
fn name_matches(pattern: &str, name: &str) -> bool {
    let name = name.to_lowercase();
    let p = pattern.to_lowercase();
    let (lead, rest) = match p.strip_prefix('*') {
        Some(r) => (true, r),
        None => (false, p.as_str()),
    };
    let (trail, core) = match rest.strip_suffix('*') {
        Some(c) => (true, c),
        None => (false, rest),
    };
    match (lead, trail) {
        (true, true) => name.contains(core),
        (true, false) => name.ends_with(core),
        (false, true) => name.starts_with(core),
        (false, false) => name == core,
    }
}

/// The first value of a query parameter.
pub(crate) fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A list parameter: repeated (`a=1&a=2`) or comma-joined (`a=1,2`, which
/// is how the Python SDK sends lists).
pub(crate) fn list_param<'a>(q: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    q.iter()
        .filter(|(k, _)| k == key)
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// One requested page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Page {
    size: usize,
    number: usize,
}

impl Page {
    fn parse(q: &[(String, String)], default: usize, max: usize) -> Result<Page, ApiError> {
        let int = |key: &str, default: usize| -> Result<usize, ApiError> {
            match param(q, key) {
                None => Ok(default),
                Some(v) => v.trim().parse::<usize>().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "Value [{v}] for field [{key}] is not a valid integer"
                    ))
                }),
            }
        };
        let size = int("pageSize", default)?;
        let number = int("pageNumber", 1)?;
        if size == 0 || size > max {
            return Err(ApiError::BadRequest(format!(
                "Value [{size}] for field [pageSize] must be between 1 and {max}"
            )));
        }
        if number == 0 {
            return Err(ApiError::BadRequest(
                "Value [0] for field [pageNumber] must be at least 1".to_owned(),
            ));
        }
        Ok(Page { size, number })
    }

    fn slice<'a, T>(&self, all: &'a [T]) -> &'a [T] {
        let start = (self.number - 1).saturating_mul(self.size).min(all.len());
        let end = start.saturating_add(self.size).min(all.len());
        &all[start..end]
    }

    fn uri(&self, path: &str, filters: &[(&str, String)], number: usize) -> String {
        let mut s = format!("{path}?pageSize={}&pageNumber={number}", self.size);
        for (k, v) in filters {
            s.push('&');
            s.push_str(k);
            s.push('=');
            s.push_str(&encode(v));
        }
        s
    }

    /// The paging fields; with `total`, also `total`, `pageCount`,
    /// `lastUri` and a `nextUri` while pages are left.
    fn listing(
        &self,
        path: &str,
        filters: &[(&str, String)],
        entities: Vec<Value>,
        total: Option<usize>,
    ) -> Value {
        let mut v = json!({
            "entities": entities,
            "pageSize": self.size,
            "pageNumber": self.number,
            "firstUri": self.uri(path, filters, 1),
            "selfUri": self.uri(path, filters, self.number),
        });
        if let Some(total) = total {
            let pages = total.div_ceil(self.size);
            v["total"] = json!(total);
            v["pageCount"] = json!(pages);
            v["lastUri"] = json!(self.uri(path, filters, pages.max(1)));
            if self.number < pages {
                v["nextUri"] = json!(self.uri(path, filters, self.number + 1));
            }
        }
        if self.number > 1 {
            v["previousUri"] = json!(self.uri(path, filters, self.number - 1));
        }
        v
    }
}

/// Percent-encodes a query value (unreserved characters, `*` and `,` stay).
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~*,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn dir(users: usize, queues: usize) -> Directory {
        Directory::from_config(&Config {
            user_ids: crate::config::generated_ids(users),
            queue_ids: crate::config::generated_ids(queues),
            ..Config::default()
        })
    }

    #[test]
    fn start_puts_every_user_in_one_or_two_queues() {
        let d = dir(7, 3);
        let snap = d.snapshot();
        assert_eq!(snap.users.len(), 7);
        assert_eq!(snap.users[0].name, "Agent 0001");
        assert_eq!(snap.users[0].email, "agent0001@example.com");
        for (i, u) in snap.users.iter().enumerate() {
            assert_eq!(u.queues.len(), if i % 2 == 1 { 2 } else { 1 }, "{i}");
            assert_eq!(u.state, UserState::Active);
        }
        assert_eq!(snap.queues[1].name, "Support 002");
        assert_ne!(snap.queues[0].division_id, snap.queues[1].division_id);
    }

    #[test]
    fn topics_fire_only_for_active_users_and_existing_queues() {
        let mut d = dir(2, 1);
        let snap = d.snapshot();
        let (u, qid) = (&snap.users[0].id, &snap.queues[0].id);
        let user_topic = format!("v2.users.{u}.conversations.calls");
        let queue_topic = format!("v2.analytics.queues.{qid}.observations");
        assert!(d.fires(&user_topic) && d.fires(&queue_topic));
        assert!(d.fires("v2.detail.events.conversation.c1.acd.start"));
        assert!(!d.fires("v2.users.nobody.presence"));
        let v = d.version;
        d.set_user_state(u, UserState::Inactive).expect("known");
        assert!(d.version > v);
        assert!(!d.fires(&user_topic));
        d.remove_queue(qid).expect("known");
        assert!(!d.fires(&format!("v2.routing.queues.{qid}.users")));
        assert_eq!(
            entity_of("v2.routing.queues.q1.users"),
            Some(Entity::Queue("q1"))
        );
        assert_eq!(entity_of("v2.users..presence"), None);
    }

    #[test]
    fn changes_are_checked() {
        let mut d = dir(2, 1);
        let snap = d.snapshot();
        let taken = snap.users[0].id.clone();
        assert_eq!(
            d.add_user(NewUser {
                id: Some(taken.clone()),
                ..NewUser::default()
            }),
            Err(DirectoryError::DuplicateId(taken))
        );
        assert!(matches!(
            d.add_user(NewUser {
                id: Some("a.b".into()),
                ..NewUser::default()
            }),
            Err(DirectoryError::BadId(_))
        ));
        assert!(matches!(
            d.add_queue(NewQueue {
                members: vec!["ghost".into()],
                ..NewQueue::default()
            }),
            Err(DirectoryError::UnknownUser(_))
        ));
        let id = d
            .add_user(NewUser {
                queues: vec![snap.queues[0].id.clone()],
                ..NewUser::default()
            })
            .expect("added");
        let snap = d.snapshot();
        let added = snap.users.iter().find(|u| u.id == id).expect("listed");
        assert_eq!(added.name, "Agent 0003");
        assert_eq!(added.queues, vec![snap.queues[0].id.clone()]);
        d.remove_user(&id).expect("known");
        assert!(!d.snapshot().queues[0].members.contains(&id));
    }

    #[test]
    fn paging_links_and_totals() {
        let d = dir(60, 1);
        let v = d
            .users_page(&q(&[("pageSize", "25"), ("pageNumber", "2")]))
            .expect("page");
        assert_eq!(v["total"], 60);
        assert_eq!(v["pageCount"], 3);
        assert_eq!(v["entities"].as_array().map(Vec::len), Some(25));
        assert_eq!(
            v["nextUri"],
            "/api/v2/users?pageSize=25&pageNumber=3&state=active"
        );
        assert_eq!(
            v["previousUri"],
            "/api/v2/users?pageSize=25&pageNumber=1&state=active"
        );
        let last = d
            .users_page(&q(&[("pageSize", "25"), ("pageNumber", "3")]))
            .expect("page");
        assert_eq!(last["entities"].as_array().map(Vec::len), Some(10));
        assert!(last.get("nextUri").is_none());
        assert!(d.users_page(&q(&[("pageSize", "501")])).is_err());
        assert!(d.users_page(&q(&[("state", "gone")])).is_err());
    }

    #[test]
    fn queue_names_match_with_wildcards() {
        assert!(name_matches("sup*", "Support 002"));
        assert!(name_matches("*002", "Support 002"));
        assert!(name_matches("*PORT*", "Support 002"));
        assert!(name_matches("support 002", "Support 002"));
        assert!(!name_matches("support", "Support 002"));
        assert_eq!(encode("a b*&"), "a%20b*%26");
    }
}
