//! The admin channel: how `chatd online`, `chatd export` and `chatd purge`
//! reach a running `chatd run`.
//!
//! The server listens on a Unix domain socket in its data directory,
//! `<data_dir>/admin.sock`, of mode 0600 inside a data directory of mode
//! 0700: only the service's user (and root) can connect. Nothing on the
//! network port exposes admin functions. The socket speaks plain HTTP/1.1:
//!
//! | request                                          | answer                                   |
//! |--------------------------------------------------|------------------------------------------|
//! | `GET /online`                                    | `200`, JSON `[{"user","connections","rooms"}]` |
//! | `GET /export?room=dm:A_B[&since=TS][&until=TS]`  | `200`, the export, streamed              |
//! | `GET /export?all=1`                              | `200`, the export, streamed              |
//! | `POST /purge?room=dm:A_B[&before=TS]`            | `200`, `{"purged": N}`                   |
//! | `POST /purge?all=1&before=TS`                    | `200`, `{"purged": N}`                   |
//!
//! Errors are a 4xx/5xx status with a one-line `text/plain` body written for
//! the operator. Times travel as message `ts` values (Unix microseconds): the
//! CLI reads `30d` or RFC 3339 against its own clock before asking.
//!
//! Which way a command goes is decided by redb's file lock (see
//! [`client::StoreAccess`]): if the CLI can open the store, no server runs and it
//! works on the file directly; if the file is locked, it asks the server
//! through the socket. Both ways run the same code below ([`write_export`],
//! [`PurgeScope::run`]), so their output is byte for byte the same.

pub mod client;
pub mod retention;
pub mod server;

use std::io::{self, Write};

use crate::chat::message::MessageView;
use crate::chat::room::parse_room;
use crate::store::{Change, Outcome, PurgeSelection, Store, StoreError, StoredMessage};

/// Name of the admin socket inside the data directory.
pub const SOCKET_FILE: &str = "admin.sock";

/// Which messages an export covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportScope {
    /// One room, optionally limited to `since..=until` (ts, inclusive).
    Room {
        /// Canonical room id, `dm:A_B`.
        room: String,
        /// Oldest ts to include.
        since: Option<u64>,
        /// Newest ts to include.
        until: Option<u64>,
    },
    /// Every room: room by room, each oldest first.
    All,
}

/// Which messages a purge deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeScope {
    /// One room's messages older than `before` (all of them without it).
    Room {
        /// Canonical room id, `dm:A_B`.
        room: String,
        /// Exclusive upper bound on ts.
        before: Option<u64>,
    },
    /// Every room's messages older than `before`.
    All {
        /// Exclusive upper bound on ts.
        before: u64,
    },
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the output failed (disk full, closed pipe, client gone).
    #[error("cannot write the export: {0}")]
    Write(#[from] io::Error),
}

/// Writes the messages of `scope` to `out` as a JSON array, one message
/// object per line (`[`, the objects, `]`; `[]` when there are none), and
/// returns how many. Each object is written as it is read, so memory stays
/// flat however large the history.
pub fn write_export<W: Write>(
    store: &Store,
    scope: &ExportScope,
    mut out: W,
) -> Result<u64, ExportError> {
    let mut first = true;
    let mut json = Vec::new();
    let mut write_one = |message: &StoredMessage| -> Result<(), ExportError> {
        json.clear();
        json.extend_from_slice(if first { b"[\n" } else { b",\n" });
        first = false;
        MessageView::export(message).write_json(&mut json);
        out.write_all(&json)?;
        Ok(())
    };
    let count = match scope {
        ExportScope::Room { room, since, until } => {
            store.export_room(room, *since, *until, &mut write_one)?
        }
        ExportScope::All => store.export_all(&mut write_one)?,
    };
    out.write_all(if count == 0 { b"[]\n" } else { b"\n]\n" })?;
    out.flush()?;
    Ok(count)
}

/// How many message objects an export of `newlines` lines holds: `[`, one
/// line per message, `]`, or the single line `[]` (see [`write_export`]).
pub fn exported_count(newlines: u64) -> u64 {
    newlines.saturating_sub(2)
}

impl ExportScope {
    /// What the export covers, for messages: `dm:A_B` or `all rooms`.
    pub fn describe(&self) -> &str {
        match self {
            ExportScope::Room { room, .. } => room,
            ExportScope::All => "all rooms",
        }
    }

    /// The query string of the `/export` request.
    pub fn to_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        match self {
            ExportScope::Room { room, since, until } => {
                query.append_pair("room", room);
                append_ts(&mut query, "since", *since);
                append_ts(&mut query, "until", *until);
            }
            ExportScope::All => {
                query.append_pair("all", "1");
            }
        }
        query.finish()
    }

    /// Reads the query string of an `/export` request.
    pub fn from_query(query: &str) -> Result<ExportScope, String> {
        let params = Params::parse(query, &["room", "since", "until", "all"])?;
        match (params.get("room"), params.flag("all")) {
            (Some(room), false) => Ok(ExportScope::Room {
                room: parse_room(room)?,
                since: params.ts("since")?,
                until: params.ts("until")?,
            }),
            (None, true) if params.get("since").is_none() && params.get("until").is_none() => {
                Ok(ExportScope::All)
            }
            (None, true) => Err("since and until go with room, not all".into()),
            _ => Err("give either room=<room> or all=1".into()),
        }
    }
}

impl PurgeScope {
    /// What the purge covers, for messages: `dm:A_B` or `all rooms`.
    pub fn describe(&self) -> &str {
        match self {
            PurgeScope::Room { room, .. } => room,
            PurgeScope::All { .. } => "all rooms",
        }
    }

    /// The change that purges this.
    pub fn command(&self) -> PurgeSelection {
        match self {
            PurgeScope::Room { room, before } => PurgeSelection::Room {
                room: room.clone(),
                before: *before,
            },
            PurgeScope::All { before } => PurgeSelection::All { before: *before },
        }
    }

    /// Deletes the messages for good; returns how many went. Blocks on
    /// write transactions: call it off the async threads.
    pub fn run(&self, store: &Store) -> Result<u64, StoreError> {
        match store.apply(Change::Purge(self.command()))? {
            Outcome::Purged { count } => Ok(count),
            _ => Ok(0),
        }
    }

    /// The query string of the `/purge` request.
    pub fn to_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        match self {
            PurgeScope::Room { room, before } => {
                query.append_pair("room", room);
                append_ts(&mut query, "before", *before);
            }
            PurgeScope::All { before } => {
                query.append_pair("all", "1");
                append_ts(&mut query, "before", Some(*before));
            }
        }
        query.finish()
    }

    /// Reads the query string of a `/purge` request.
    pub fn from_query(query: &str) -> Result<PurgeScope, String> {
        let params = Params::parse(query, &["room", "before", "all"])?;
        let before = params.ts("before")?;
        match (params.get("room"), params.flag("all"), before) {
            (Some(room), false, before) => Ok(PurgeScope::Room {
                room: parse_room(room)?,
                before,
            }),
            (None, true, Some(before)) => Ok(PurgeScope::All { before }),
            (None, true, None) => Err("purging all rooms needs before=<ts>".into()),
            _ => Err("give either room=<room> or all=1".into()),
        }
    }
}

fn append_ts(query: &mut form_urlencoded::Serializer<'_, String>, name: &str, ts: Option<u64>) {
    if let Some(ts) = ts {
        query.append_pair(name, &ts.to_string());
    }
}

/// A request's query parameters, each known name at most once.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: &str, known: &[&str]) -> Result<Params, String> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                return Err(format!("unknown parameter {name:?}"));
            }
            if pairs[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(format!("parameter {name:?} given twice"));
            }
        }
        Ok(Params(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        self.get(name) == Some("1")
    }

    fn ts(&self, name: &str) -> Result<Option<u64>, String> {
        self.get(name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("{name}={v:?} is not a ts in microseconds"))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil::{put, tmp_store};

    #[test]
    fn export_scope_round_trips_through_the_query() {
        for scope in [
            ExportScope::All,
            ExportScope::Room {
                room: "dm:A_B".into(),
                since: None,
                until: None,
            },
            ExportScope::Room {
                room: "dm:A_B".into(),
                since: Some(5),
                until: Some(u64::MAX),
            },
        ] {
            assert_eq!(ExportScope::from_query(&scope.to_query()), Ok(scope));
        }
        // Legacy room names are made canonical.
        assert_eq!(
            ExportScope::from_query("room=B%2CA"),
            Ok(ExportScope::Room {
                room: "dm:A_B".into(),
                since: None,
                until: None
            })
        );
        for bad in [
            "",
            "room=dm:A_B&all=1",
            "all=1&since=3",
            "room=nope",
            "room=dm:A_B&since=x",
            "room=dm:A_B&room=dm:A_C",
            "room=dm:A_B&limit=3",
        ] {
            assert!(ExportScope::from_query(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn purge_scope_round_trips_through_the_query() {
        for scope in [
            PurgeScope::All { before: 7 },
            PurgeScope::Room {
                room: "dm:A_B".into(),
                before: None,
            },
            PurgeScope::Room {
                room: "dm:A_B".into(),
                before: Some(9),
            },
        ] {
            assert_eq!(PurgeScope::from_query(&scope.to_query()), Ok(scope));
        }
        for bad in ["", "all=1", "all=1&room=dm:A_B&before=1", "room=a_b"] {
            assert!(PurgeScope::from_query(bad).is_err(), "{bad:?}");
        }
    }

    fn export_text(store: &Store, scope: &ExportScope) -> (u64, String) {
        let mut out = Vec::new();
        let n = write_export(store, scope, &mut out).unwrap();
        (n, String::from_utf8(out).unwrap())
    }

    #[test]
    fn export_is_a_json_array_one_object_per_line() {
        let (_dir, store) = tmp_store();
        let room = |since, until| ExportScope::Room {
            room: "dm:A_B".into(),
            since,
            until,
        };
        assert_eq!(export_text(&store, &room(None, None)), (0, "[]\n".into()));
        put(&store, "dm:A_B", 1, "one\nline");
        put(&store, "dm:A_B", 2, "two");
        put(&store, "dm:A_C", 3, "three");
        let (n, text) = export_text(&store, &room(None, None));
        assert_eq!(n, 2);
        assert_eq!(
            text,
            "[\n\
             {\"roomId\":\"dm:A_B\",\"id\":\"jxKCSoWK6t4p8vojAAAD\",\"from\":\"A\",\"text\":\"one\\nline\",\"to\":\"B\",\"time\":\"01/01/1970, 12:00:00 am\",\"__v\":0},\n\
             {\"roomId\":\"dm:A_B\",\"id\":\"jxKCSoWK6t4p8vojAAAD\",\"from\":\"A\",\"text\":\"two\",\"to\":\"B\",\"time\":\"01/01/1970, 12:00:00 am\",\"__v\":0}\n\
             ]\n"
        );
        assert_eq!(exported_count(text.matches('\n').count() as u64), 2);
        assert_eq!(exported_count(1), 0);
        let (n, text) = export_text(&store, &room(Some(2), Some(2)));
        assert_eq!(n, 1);
        assert!(text.contains("two") && !text.contains("one"));
        let (n, text) = export_text(&store, &ExportScope::All);
        assert_eq!(n, 3);
        let parsed: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[2]["text"], "three");
    }

    #[test]
    fn purge_scopes_delete_what_they_say() {
        let (_dir, store) = tmp_store();
        for ts in 1..=4 {
            put(&store, "dm:A_B", ts, "x");
            put(&store, "dm:A_C", ts, "x");
        }
        let room = PurgeScope::Room {
            room: "dm:A_B".into(),
            before: Some(3),
        };
        assert_eq!(room.run(&store).unwrap(), 2);
        assert_eq!(PurgeScope::All { before: 4 }.run(&store).unwrap(), 4);
        let (n, _) = export_text(&store, &ExportScope::All);
        assert_eq!(n, 2);
    }
}
