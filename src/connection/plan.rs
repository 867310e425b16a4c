//! Which shard (channel) each topic lives in, kept stable while the topic
//! set changes: a topic never moves from one shard to another, so a change
//! of the directory never touches a subscription that stays. Removed topics
//! leave their shard; new ones fill shards that have room, in order, then
//! new shards up to the channel budget; what does not fit is unserved.

use std::collections::HashSet;
use std::sync::Arc;

/// The shards after a change, and what the change was.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every shard's topics: the old shards first, in their order, then new ones.
    pub shards: Vec<Arc<[String]>>,
    /// The shards whose list changed (new shards included).
    pub changed: Vec<usize>,
    pub added: usize,
    pub removed: usize,
    /// Topics that fit in no shard within the budget.
    pub unserved: Vec<String>,
}

/// Places `desired` (in its order) given the `current` shards, at most
/// `per_shard` topics a shard and `max_shards` shards.
pub fn replan(
    current: &[Arc<[String]>],
    desired: &[String],
    per_shard: usize,
    max_shards: usize,
) -> Plan {
    let wanted: HashSet<&str> = desired.iter().map(String::as_str).collect();
    let mut placed: HashSet<&str> = HashSet::with_capacity(desired.len());
    let mut plan = Plan::default();
    let mut shards: Vec<Vec<String>> = Vec::with_capacity(current.len().max(1));
    for (index, topics) in current.iter().enumerate() {
        let kept: Vec<String> = topics
            .iter()
            .filter(|t| wanted.contains(t.as_str()) && placed.insert(t.as_str()))
            .cloned()
            .collect();
        if kept.len() != topics.len() {
            plan.removed += topics.len() - kept.len();
            plan.changed.push(index);
        }
        shards.push(kept);
    }
    let mut new = desired.iter().filter(|t| placed.insert(t.as_str()));
    let mut index = 0;
    'fill: for topic in new.by_ref() {
        loop {
            if index == shards.len() {
                if shards.len() >= max_shards {
                    plan.unserved.push(topic.clone());
                    break 'fill;
                }
                shards.push(Vec::new());
            }
            if shards[index].len() < per_shard {
                shards[index].push(topic.clone());
                plan.added += 1;
                if plan.changed.last() != Some(&index) && !plan.changed.contains(&index) {
                    plan.changed.push(index);
                }
                continue 'fill;
            }
            index += 1;
        }
    }
    plan.unserved.extend(new.cloned());
    plan.changed.sort_unstable();
    plan.shards = shards.into_iter().map(Arc::from).collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn topics(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("v2.users.u{i}.presence")).collect()
    }

    fn shards(lists: &[Vec<String>]) -> Vec<Arc<[String]>> {
        lists.iter().map(|l| Arc::from(l.clone())).collect()
    }

    #[test]
    fn first_plan_fills_shards_in_order() {
        let plan = replan(&[], &topics(0..25), 10, 5);
        let lens: Vec<usize> = plan.shards.iter().map(|s| s.len()).collect();
        assert_eq!(lens, vec![10, 10, 5]);
        assert_eq!(plan.changed, vec![0, 1, 2]);
        assert_eq!((plan.added, plan.removed), (25, 0));
        assert!(plan.unserved.is_empty());
    }

    #[test]
    fn removals_leave_a_hole_that_new_topics_fill_first() {
        let current = shards(&[topics(0..10), topics(10..20)]);
        let mut desired: Vec<String> = topics(0..20);
        desired.retain(|t| t != "v2.users.u3.presence" && t != "v2.users.u15.presence");
        desired.extend(topics(20..23));
        let plan = replan(&current, &desired, 10, 5);
        assert_eq!(plan.shards[0].len(), 10);
        assert!(plan.shards[0].contains(&"v2.users.u20.presence".to_owned()));
        assert!(plan.shards[1].contains(&"v2.users.u21.presence".to_owned()));
        assert_eq!(plan.shards[2].as_ref(), &topics(22..23)[..]);
        assert_eq!((plan.added, plan.removed), (3, 2));
        assert_eq!(plan.changed, vec![0, 1, 2]);
    }

    #[test]
    fn no_change_changes_no_shard() {
        let current = shards(&[topics(0..10), topics(10..14)]);
        let plan = replan(&current, &topics(0..14), 10, 5);
        assert!(plan.changed.is_empty());
        assert_eq!(plan.shards, current);
    }

    #[test]
    fn what_exceeds_the_budget_is_unserved_and_shards_never_disappear() {
        let plan = replan(&[], &topics(0..35), 10, 3);
        assert_eq!(plan.shards.len(), 3);
        assert_eq!(plan.unserved, topics(30..35));
        let plan = replan(&plan.shards, &[], 10, 3);
        assert_eq!(plan.shards.len(), 3);
        assert!(plan.shards.iter().all(|s| s.is_empty()));
        assert_eq!(plan.removed, 30);
    }

    proptest! {
        /// Across any sequence of topic sets: every kept topic stays in its
        /// shard, no shard exceeds its size, the budget holds, and every
        /// topic of the set is placed exactly once or reported unserved.
        #[test]
        fn topics_never_move_and_every_topic_is_placed_once(
            sets in prop::collection::vec(prop::collection::btree_set(0usize..60, 0..60), 1..8),
            per_shard in 1usize..12,
            max_shards in 1usize..6,
        ) {
            let mut current: Vec<Arc<[String]>> = Vec::new();
            for set in sets {
                let desired: Vec<String> = set.iter().map(|i| format!("t{i}")).collect();
                let plan = replan(&current, &desired, per_shard, max_shards);
                prop_assert!(plan.shards.len() <= max_shards.max(current.len()));
                prop_assert!(plan.shards.len() >= current.len());
                let mut seen = HashSet::new();
                for (index, shard) in plan.shards.iter().enumerate() {
                    prop_assert!(shard.len() <= per_shard);
                    for topic in shard.iter() {
                        prop_assert!(seen.insert(topic.clone()), "{} twice", topic);
                        if let Some(old) = current.iter().position(|s| s.contains(topic)) {
                            prop_assert_eq!(old, index, "{} moved", topic);
                        }
                    }
                    let before = current.get(index).map(|s| s.as_ref()).unwrap_or(&[]);
                    prop_assert_eq!(plan.changed.contains(&index), before != shard.as_ref());
                }
                for topic in &plan.unserved {
                    prop_assert!(seen.insert(topic.clone()));
                }
                prop_assert_eq!(seen.len(), desired.len());
                prop_assert!(plan.unserved.is_empty() || plan.shards.iter().all(|s| s.len() == per_shard));
                current = plan.shards;
            }
        }
    }
}
