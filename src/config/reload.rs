//! What a reload keeps from the running config: gossip slots (and so health, ejections and
//! EWMA) of unchanged upstream/target names, generated sticky keys, and the settings that only
//! a restart can change. Pure functions over two snapshots; the control thread applies them.

use super::{Problem, Snapshot};
use std::collections::HashMap;

/// Gossip slots by (upstream name, target as written), for the life of the process. A name
/// seen before gets its old slot back; a new one gets a never-used slot, so no target ever
/// inherits another's health. Slots are not recycled: a process that meets more distinct
/// targets than its capacity refuses the reload and asks for a restart.
#[derive(Clone)]
pub struct SlotMap {
    by_name: HashMap<(String, String), usize>,
    next: usize,
    capacity: usize,
}

/// Slots for at least this many distinct targets over a process's life.
pub const MIN_SLOT_CAPACITY: usize = 4096;

impl SlotMap {
    /// The slots the first snapshot was compiled with, and room for growth.
    pub fn new(first: &Snapshot) -> SlotMap {
        let mut by_name = HashMap::new();
        let mut next = 0;
        for u in &first.upstreams {
            for t in &u.targets {
                by_name.insert((u.name.clone(), t.label.clone()), t.slot);
                next = next.max(t.slot + 1);
            }
        }
        SlotMap {
            by_name,
            next,
            capacity: (first.total_targets * 4).max(MIN_SLOT_CAPACITY),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Gives every target of `new` its slot. Returns the slots of targets that `old` did not
    /// have (their shared state must start fresh), or the problem when slots ran out.
    pub fn assign(&mut self, old: &Snapshot, new: &mut Snapshot) -> Result<Vec<usize>, Problem> {
        let mut entering = Vec::new();
        for (i, u) in new.upstreams.iter_mut().enumerate() {
            for (j, t) in u.targets.iter_mut().enumerate() {
                let key = (u.name.clone(), t.label.clone());
                t.slot = match self.by_name.get(&key) {
                    Some(&slot) => slot,
                    None if self.next < self.capacity => {
                        self.next += 1;
                        self.by_name.insert(key, self.next - 1);
                        self.next - 1
                    }
                    None => {
                        return Err(Problem {
                            key: format!("upstreams[{i}].targets[{j}]"),
                            line: None,
                            message: format!(
                                "this process has already served {} distinct targets (its capacity); restart to add more",
                                self.capacity
                            ),
                        });
                    }
                };
                if !old.has_target(&u.name, &t.label) {
                    entering.push(t.slot);
                }
            }
        }
        Ok(entering)
    }
}

impl Snapshot {
    fn has_target(&self, upstream: &str, label: &str) -> bool {
        self.upstreams
            .iter()
            .any(|u| u.name == upstream && u.targets.iter().any(|t| t.label == label))
    }
}

/// Settings a running process cannot change: each difference is a problem naming the key.
pub fn restart_only_changes(old: &Snapshot, new: &Snapshot) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut differs = |key: &str, running: String, file: String| {
        if running != file {
            problems.push(Problem {
                key: key.to_string(),
                line: None,
                message: format!(
                    "changing it needs a restart (running: {running}, file: {file}); nothing was reloaded"
                ),
            });
        }
    };
    differs(
        "server.workers",
        old.workers.to_string(),
        new.workers.to_string(),
    );
    differs(
        "server.pin_cores",
        old.pin_cores.to_string(),
        new.pin_cores.to_string(),
    );
    differs(
        "server.io_uring_entries",
        old.io_uring_entries.to_string(),
        new.io_uring_entries.to_string(),
    );
    differs(
        "server.io_driver",
        format!("{:?}", old.io_driver),
        format!("{:?}", new.io_driver),
    );
    let admin = |s: &Snapshot| s.admin.map_or("off".to_string(), |a| a.to_string());
    differs("admin.bind", admin(old), admin(new));
    problems
}

/// A sticky upstream whose key was generated keeps the running key, so a reload does not
/// unstick every client (a configured `secret` is used as written).
pub fn carry_sticky_keys(old: &Snapshot, new: &mut Snapshot) {
    for u in &mut new.upstreams {
        let Some(sticky) = &mut u.sticky else {
            continue;
        };
        if !sticky.generated_key {
            continue;
        }
        let running = old
            .upstreams
            .iter()
            .find(|o| o.name == u.name)
            .and_then(|o| o.sticky.as_ref())
            .filter(|s| s.generated_key);
        if let Some(running) = running {
            sticky.key = running.key.clone();
            sticky.ids = super::compile::sticky_ids(&sticky.key, &u.targets);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use std::path::Path;

    fn snapshot(upstreams: &str) -> Snapshot {
        let text = format!("[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n{upstreams}");
        load_str(Path::new("t.toml"), &text).unwrap()
    }

    fn slots(s: &Snapshot) -> Vec<(String, usize)> {
        s.upstreams
            .iter()
            .flat_map(|u| {
                u.targets
                    .iter()
                    .map(|t| (format!("{}/{}", u.name, t.label), t.slot))
            })
            .collect()
    }

    #[test]
    fn unchanged_names_keep_their_slots_and_new_ones_get_fresh_slots() {
        let a = "[[upstreams]]\nname = \"a\"\ntargets = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n";
        let b = "[[upstreams]]\nname = \"b\"\ntargets = [\"127.0.0.1:3\"]\n";
        let first = snapshot(&format!("{a}{b}"));
        let mut map = SlotMap::new(&first);
        // b moves first, a loses a target and gains one: positions shift, names do not
        let mut second = snapshot(&format!(
            "{b}[[upstreams]]\nname = \"a\"\ntargets = [\"127.0.0.1:2\", \"127.0.0.1:9\"]\n"
        ));
        let entering = map.assign(&first, &mut second).unwrap();
        assert_eq!(
            slots(&second),
            vec![
                ("b/127.0.0.1:3".to_string(), 2),
                ("a/127.0.0.1:2".to_string(), 1),
                ("a/127.0.0.1:9".to_string(), 3),
            ]
        );
        assert_eq!(entering, vec![3]);
        // a target that comes back gets its old slot, and is reported as entering again
        let mut third = snapshot(&format!("{a}{b}"));
        let entering = map.assign(&second, &mut third).unwrap();
        assert_eq!(
            slots(&third),
            vec![
                ("a/127.0.0.1:1".to_string(), 0),
                ("a/127.0.0.1:2".to_string(), 1),
                ("b/127.0.0.1:3".to_string(), 2),
            ]
        );
        assert_eq!(entering, vec![0]);
    }

    #[test]
    fn running_out_of_slots_is_a_problem_not_a_reuse() {
        let first = snapshot("[[upstreams]]\nname = \"a\"\ntargets = [\"127.0.0.1:1\"]\n");
        let mut map = SlotMap::new(&first);
        map.capacity = 2;
        let mut second = snapshot(
            "[[upstreams]]\nname = \"a\"\ntargets = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\n",
        );
        let problem = map.assign(&first, &mut second).unwrap_err();
        assert_eq!(problem.key, "upstreams[0].targets[2]");
        assert!(problem.message.contains("restart"), "{}", problem.message);
    }

    #[test]
    fn restart_only_settings_are_named() {
        let old = snapshot("[server]\nworkers = 2\n");
        let new = snapshot("[server]\nworkers = 3\n");
        let problems = restart_only_changes(&old, &new);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "server.workers");
        assert!(restart_only_changes(&old, &snapshot("[server]\nworkers = 2\n")).is_empty());
    }

    #[test]
    fn a_generated_sticky_key_survives_a_reload() {
        let u = "[[upstreams]]\nname = \"a\"\ntargets = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nsticky = { cookie = \"s\" }\n";
        let old = snapshot(u);
        let mut new = snapshot(u);
        assert_ne!(
            old.upstreams[0].sticky.as_ref().unwrap().ids,
            new.upstreams[0].sticky.as_ref().unwrap().ids,
            "each compile generates its own key"
        );
        carry_sticky_keys(&old, &mut new);
        assert_eq!(
            old.upstreams[0].sticky.as_ref().unwrap().ids,
            new.upstreams[0].sticky.as_ref().unwrap().ids
        );
    }
}
