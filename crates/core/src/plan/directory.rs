//! The LDAP / Active Directory sync's decisions (issue #15): given what the directory says
//! (which of Flotilla's directory users its searches still find, and who is in the groups
//! that teams are mapped to) and what the store holds, which users to disable or enable
//! and which team memberships to add or remove.
//!
//! Design decisions:
//! * **The directory is the truth for directory users only.** A user the directory created
//!   (it has a DN) is a member of a mapped team exactly when the directory puts it in the
//!   team's group; a local user (no DN) is never touched, whatever team it is in, so
//!   switching LDAP on keeps every hand-made user and membership working.
//! * **Not found is disabled.** A directory user that no search finds any more (deleted,
//!   moved out of every base DN, or excluded by a search filter such as AD's "account
//!   disabled" bit) is disabled, and loses its mapped memberships; found again, it is
//!   enabled again. Disabling, not deleting, keeps its keys and audit trail.
//! * **DNs compare normalized**: case-insensitively and without the spaces around the
//!   commas and equals signs between components (`CN=Alice, OU=People` is
//!   `cn=alice,ou=people`), as directories treat them.
//! * Deterministic: everything is in `BTreeMap`/`BTreeSet` order. The same function plans
//!   the periodic sync of every user and the one-user sync at sign-in (give it one user).

use std::collections::{BTreeMap, BTreeSet};

/// A user Flotilla holds that came from the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    pub username: String,
    /// Whether the store has it disabled now.
    pub disabled: bool,
    /// Its entry's DN as the directory's searches find it now; `None`: not found.
    pub found: Option<String>,
}

/// A team mapped to a directory group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MappedTeam {
    pub org: String,
    pub team: String,
    pub group_dn: String,
}

/// What the sync observed.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub users: Vec<DirectoryUser>,
    pub teams: Vec<MappedTeam>,
    /// Each mapped group's member DNs, as the directory answered (`None`: the group was not
    /// found, which grants nobody).
    pub group_members: BTreeMap<String, Option<Vec<String>>>,
    /// The current memberships of the users in `users`: (org, team, username).
    pub memberships: BTreeSet<(String, String, String)>,
}

/// The sync's steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub disable: Vec<String>,
    pub enable: Vec<String>,
    /// (org, team, username)
    pub add: Vec<(String, String, String)>,
    pub remove: Vec<(String, String, String)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.disable.is_empty()
            && self.enable.is_empty()
            && self.add.is_empty()
            && self.remove.is_empty()
    }
}

/// Which server a sign-in name goes to: `name@domain` to the server serving `domain`
/// (compared case-insensitively), anything else to the first server (the default domain's).
/// Answers the server's index, the name to search for, and the Flotilla user name (the
/// name for the default domain, `name@domain` for another, lowercased).
pub fn server_for(login: &str, domains: &[Option<String>]) -> Option<(usize, String, String)> {
    if domains.is_empty() {
        return None;
    }
    if let Some((name, domain)) = login.rsplit_once('@')
        && let Some(index) = domains.iter().enumerate().skip(1).find_map(|(i, d)| {
            d.as_deref()
                .filter(|d| d.eq_ignore_ascii_case(domain))
                .map(|_| i)
        })
    {
        return Some((index, name.to_owned(), login.to_lowercase()));
    }
    Some((0, login.to_owned(), login.to_lowercase()))
}

/// A DN in the form DNs are compared in (see the module docs).
pub fn normalize_dn(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| {
            rdn.split('=')
                .map(|part| part.trim().to_lowercase())
                .collect::<Vec<_>>()
                .join("=")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Plans a sync (see the module docs).
pub fn plan(observed: &Observed) -> Plan {
    let mut plan = Plan::default();
    let members: BTreeMap<&str, BTreeSet<String>> = observed
        .group_members
        .iter()
        .map(|(group, members)| {
            let set = members
                .iter()
                .flatten()
                .map(|dn| normalize_dn(dn))
                .collect();
            (group.as_str(), set)
        })
        .collect();
    let mut users: Vec<&DirectoryUser> = observed.users.iter().collect();
    users.sort_by(|a, b| a.username.cmp(&b.username));
    let mut teams: Vec<&MappedTeam> = observed.teams.iter().collect();
    teams.sort();
    for user in users {
        match (&user.found, user.disabled) {
            (None, false) => plan.disable.push(user.username.clone()),
            (Some(_), true) => plan.enable.push(user.username.clone()),
            _ => {}
        }
        let dn = user.found.as_deref().map(normalize_dn);
        for team in &teams {
            let granted = dn.as_ref().is_some_and(|dn| {
                members
                    .get(team.group_dn.as_str())
                    .is_some_and(|set| set.contains(dn))
            });
            let key = (team.org.clone(), team.team.clone(), user.username.clone());
            let held = observed.memberships.contains(&key);
            if granted && !held {
                plan.add.push(key);
            } else if !granted && held {
                plan.remove.push(key);
            }
        }
    }
    plan
}

/// The observation after `plan` was applied (for the "planning again yields nothing" test).
pub fn apply(observed: &Observed, plan: &Plan) -> Observed {
    let mut next = observed.clone();
    for user in &mut next.users {
        if plan.disable.contains(&user.username) {
            user.disabled = true;
        }
        if plan.enable.contains(&user.username) {
            user.disabled = false;
        }
    }
    for key in &plan.add {
        next.memberships.insert(key.clone());
    }
    for key in &plan.remove {
        next.memberships.remove(key);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn team(name: &str, group: &str) -> MappedTeam {
        MappedTeam {
            org: "corp".into(),
            team: name.into(),
            group_dn: group.into(),
        }
    }

    fn key(team: &str, user: &str) -> (String, String, String) {
        ("corp".into(), team.into(), user.into())
    }

    #[test]
    fn groups_grant_memberships_and_a_lost_user_is_disabled() {
        let observed = Observed {
            users: vec![
                DirectoryUser {
                    username: "alice".into(),
                    disabled: false,
                    found: Some("uid=alice,ou=People,dc=example".into()),
                },
                DirectoryUser {
                    username: "bob".into(),
                    disabled: false,
                    found: None,
                },
                DirectoryUser {
                    username: "carol".into(),
                    disabled: true,
                    found: Some("uid=carol,ou=people,dc=example".into()),
                },
            ],
            teams: vec![
                team("ops", "cn=ops,dc=example"),
                team("dev", "cn=dev,dc=example"),
            ],
            group_members: BTreeMap::from([
                (
                    "cn=ops,dc=example".to_owned(),
                    Some(vec![
                        "UID=Alice, OU=People, DC=example".to_owned(),
                        "uid=bob,ou=people,dc=example".to_owned(),
                    ]),
                ),
                ("cn=dev,dc=example".to_owned(), None),
            ]),
            memberships: BTreeSet::from([key("dev", "alice"), key("ops", "bob")]),
        };
        let plan = plan(&observed);
        assert_eq!(plan.disable, vec!["bob".to_owned()]);
        assert_eq!(plan.enable, vec!["carol".to_owned()]);
        assert_eq!(plan.add, vec![key("ops", "alice")]);
        assert_eq!(plan.remove, vec![key("dev", "alice"), key("ops", "bob")]);
    }

    #[test]
    fn a_domain_picks_its_server_and_the_first_is_the_default() {
        let domains = [None, Some("corp.example".to_owned())];
        assert_eq!(
            server_for("Alice@CORP.example", &domains),
            Some((1, "Alice".into(), "alice@corp.example".into()))
        );
        assert_eq!(
            server_for("bob", &domains),
            Some((0, "bob".into(), "bob".into()))
        );
        assert_eq!(
            server_for("bob@other.example", &domains),
            Some((0, "bob@other.example".into(), "bob@other.example".into()))
        );
        assert_eq!(server_for("bob", &[]), None);
    }

    #[test]
    fn dns_compare_normalized() {
        assert_eq!(
            normalize_dn("CN=Alice Smith, OU=People ,DC=Example"),
            "cn=alice smith,ou=people,dc=example"
        );
    }

    fn observed_strategy() -> impl Strategy<Value = Observed> {
        let names = ["a", "b", "c", "d"];
        let groups = ["g1", "g2", "g3"];
        (
            proptest::collection::vec((0..4usize, any::<bool>(), any::<bool>()), 0..4),
            proptest::collection::vec(
                (0..3usize, proptest::collection::vec(0..4usize, 0..4)),
                0..3,
            ),
            proptest::collection::vec((0..3usize, 0..4usize), 0..6),
        )
            .prop_map(move |(users, groups_in, held)| {
                let users: BTreeMap<usize, (bool, bool)> =
                    users.into_iter().map(|(u, d, f)| (u, (d, f))).collect();
                Observed {
                    users: users
                        .iter()
                        .map(|(u, (disabled, found))| DirectoryUser {
                            username: names[*u].into(),
                            disabled: *disabled,
                            found: found.then(|| format!("uid={},dc=x", names[*u])),
                        })
                        .collect(),
                    teams: groups.iter().map(|g| team(&format!("t{g}"), g)).collect(),
                    group_members: groups_in
                        .into_iter()
                        .map(|(g, members)| {
                            (
                                groups[g].to_owned(),
                                Some(
                                    members
                                        .iter()
                                        .map(|m| format!("uid={},dc=x", names[*m]))
                                        .collect(),
                                ),
                            )
                        })
                        .collect(),
                    memberships: held
                        .into_iter()
                        .filter(|(_, u)| users.contains_key(u))
                        .map(|(g, u)| key(&format!("t{}", groups[g]), names[u]))
                        .collect(),
                }
            })
    }

    proptest! {
        #[test]
        fn planning_again_after_applying_yields_nothing(observed in observed_strategy()) {
            let first = plan(&observed);
            let after = apply(&observed, &first);
            prop_assert!(plan(&after).is_empty(), "{:?}", plan(&after));
            // A user the directory does not find ends with no mapped membership.
            for user in after.users.iter().filter(|u| u.found.is_none()) {
                prop_assert!(after.memberships.iter().all(|(_, _, u)| *u != user.username));
                prop_assert!(user.disabled);
            }
        }
    }
}
