//! The directory stage: lists the org's users and queues every
//! `directory.refresh`, expands the `{user}` and `{queue}` topic templates,
//! and publishes the whole topic set on a `watch` (a new value only on a real
//! change). A listing that fails on any page, or is rate-limited, changes
//! nothing: the last good set stays, and the listing is retried with
//! backoff, never sooner than a `Retry-After`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, Policy};
use crate::config::{DirectorySection, Settings, UsersFrom};
use crate::genesys::api::{Api, ApiError};
use crate::genesys::directory::{list, Of};
use crate::genesys::topic::{Entity, Template};
use crate::telemetry::events;

/// The ids a listing found, sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Entities {
    pub users: BTreeSet<String>,
    pub queues: BTreeSet<String>,
}

/// The topics of a configuration: literal ones and templates, and where
/// the templates' ids come from.
#[derive(Clone)]
pub struct Directory {
    literals: Vec<String>,
    templates: Vec<Template>,
    settings: DirectorySection,
}

impl Directory {
    pub fn new(settings: &Settings) -> Self {
        Self {
            literals: settings.genesys.topics.clone(),
            templates: settings.genesys.templates.clone(),
            settings: settings.genesys.directory.clone(),
        }
    }

    /// Whether any topic depends on the directory.
    pub fn needed(&self) -> bool {
        !self.templates.is_empty()
    }

    fn uses(&self, entity: Entity) -> bool {
        self.templates.iter().any(|t| t.entity() == entity)
    }

    /// The topic set: the literal topics, then each template over its
    /// entities in id order, without repeats.
    pub fn expand(&self, entities: &Entities) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut topics = Vec::new();
        let mut push = |topic: String| {
            if seen.insert(topic.clone()) {
                topics.push(topic);
            }
        };
        for topic in &self.literals {
            push(topic.clone());
        }
        for template in &self.templates {
            let ids = match template.entity() {
                Entity::User => &entities.users,
                Entity::Queue => &entities.queues,
            };
            for id in ids {
                push(template.expand(id));
            }
        }
        topics
    }

    /// Lists what the templates need, every page of it. Returns the
    /// entities and the number of requests it took.
    pub async fn list(&self, api: &Api) -> Result<(Entities, u32), ApiError> {
        let d = &self.settings;
        let mut entities = Entities::default();
        let mut requests = 0;
        let members = d.users_from == UsersFrom::QueueMembers && self.uses(Entity::User);
        if self.uses(Entity::Queue) || members {
            let queues = list(
                api,
                Of::Queues {
                    name: &d.queue_name,
                    division_ids: &d.queue_division_ids,
                },
                d.page_size,
            )
            .await?;
            requests += queues.requests;
            entities.queues = queues.ids.into_iter().collect();
        }
        if members {
            for queue in &entities.queues {
                let listing = list(api, Of::Members { queue_id: queue }, d.page_size).await?;
                requests += listing.requests;
                entities.users.extend(listing.ids);
            }
        } else if self.uses(Entity::User) {
            let users = list(
                api,
                Of::Users {
                    state: &d.users_state,
                },
                d.page_size,
            )
            .await?;
            requests += users.requests;
            entities.users = users.ids.into_iter().collect();
        }
        if !self.uses(Entity::Queue) {
            // Listed only to find their members: no queue topic to serve.
            entities.queues.clear();
        }
        Ok((entities, requests))
    }

    /// Lists once, retrying with backoff (and `Retry-After`) until it
    /// succeeds or `cancel`.
    async fn list_until_good(
        &self,
        api: &Api,
        backoff: &mut Backoff,
        cancel: &CancellationToken,
    ) -> Option<Entities> {
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                () = cancel.cancelled() => return None,
                result = self.list(api) => result,
            };
            match result {
                Ok((entities, requests)) => {
                    events::directory_listed(
                        entities.users.len(),
                        entities.queues.len(),
                        requests,
                        started.elapsed(),
                    );
                    backoff.reset();
                    return Some(entities);
                }
                Err(e) => {
                    let wait = backoff.next_delay(e.retry_after());
                    let rate_limited = matches!(e, ApiError::RateLimited { .. });
                    events::directory_failed(&e, rate_limited, wait);
                    tokio::select! {
                        () = cancel.cancelled() => return None,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Keeps `topics` current until `cancel`: lists, expands, publishes a
    /// changed set, waits `refresh`, and again.
    pub async fn run(
        self,
        api: Api,
        topics: watch::Sender<Arc<[String]>>,
        cancel: CancellationToken,
    ) {
        if !self.needed() {
            return;
        }
        let refresh = self.settings.refresh;
        let mut backoff = Backoff::new(&Policy {
            initial: Duration::from_secs(1),
            max: refresh.min(Duration::from_secs(60)),
            stable_after: Duration::ZERO,
        });
        loop {
            let Some(entities) = self.list_until_good(&api, &mut backoff, &cancel).await else {
                return;
            };
            let expanded: Arc<[String]> = self.expand(&entities).into();
            topics.send_if_modified(|current| {
                let changed = *current != expanded;
                if changed {
                    *current = expanded;
                }
                changed
            });
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(refresh) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(topics: &[&str]) -> Directory {
        let mut literals = Vec::new();
        let mut templates = Vec::new();
        for t in topics {
            match Template::parse(t).expect("valid") {
                Some(template) => templates.push(template),
                None => literals.push((*t).to_owned()),
            }
        }
        Directory {
            literals,
            templates,
            settings: DirectorySection::default(),
        }
    }

    #[test]
    fn expands_literals_then_each_template_over_its_entities() {
        let d = directory(&[
            "v2.users.{user}?presence&routingStatus",
            "v2.system.x",
            "v2.routing.queues.{queue}.conversations",
            "v2.users.u1?presence&routingStatus",
        ]);
        let entities = Entities {
            users: ["u2", "u1"].map(String::from).into(),
            queues: ["q1"].map(String::from).into(),
        };
        assert_eq!(
            d.expand(&entities),
            vec![
                "v2.system.x",
                "v2.users.u1?presence&routingStatus",
                "v2.users.u2?presence&routingStatus",
                "v2.routing.queues.q1.conversations",
            ]
        );
        assert!(d.needed());
        assert!(!directory(&["v2.system.x"]).needed());
        assert_eq!(
            directory(&["v2.system.x"]).expand(&Entities::default()),
            vec!["v2.system.x"]
        );
    }
}
