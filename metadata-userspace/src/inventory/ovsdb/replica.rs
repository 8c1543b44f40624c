//! Tables kept up to date from a monitor: the initial rows, then the
//! `update2`/`update3` diffs (`initial`, `insert`, `modify`, `delete`).
//! A `modify` carries, for a set or map column, the elements to toggle;
//! for any other column, the new value. Which is which comes from the
//! server's schema: a set is a column that may hold more than one value;
//! an optional column (min 0, max 1) comes as its new value, as seen on
//! the wire from ovsdb-server.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use super::OvsdbError;

/// How a column's values combine in a `modify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Scalar,
    Set,
    Map,
}

impl ColumnKind {
    /// The kind of a column from its schema `type`.
    pub fn of(column_type: &Value) -> Self {
        let Some(object) = column_type.as_object() else {
            return Self::Scalar;
        };
        if object.contains_key("value") {
            return Self::Map;
        }
        // "max" is a number or "unlimited"; absent means 1.
        let max = object.get("max").map_or(Some(1), Value::as_u64);
        if max == Some(1) {
            Self::Scalar
        } else {
            Self::Set
        }
    }
}

/// Column kinds of the tables of one database, from `get_schema`.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    kinds: HashMap<(String, String), ColumnKind>,
}

impl Schema {
    pub fn from_json(schema: &Value) -> Result<Self, OvsdbError> {
        let tables = schema["tables"]
            .as_object()
            .ok_or_else(|| OvsdbError::Unexpected {
                what: "schema",
                value: schema.clone(),
            })?;
        let mut kinds = HashMap::new();
        for (table, definition) in tables {
            let columns = definition["columns"].as_object().into_iter().flatten();
            for (column, spec) in columns {
                kinds.insert(
                    (table.clone(), column.clone()),
                    ColumnKind::of(&spec["type"]),
                );
            }
        }
        Ok(Self { kinds })
    }

    fn kind(&self, table: &str, column: &str) -> ColumnKind {
        self.kinds
            .get(&(table.to_owned(), column.to_owned()))
            .copied()
            .unwrap_or(ColumnKind::Scalar)
    }
}

/// One row: column -> value in OVSDB's JSON encoding.
pub type Row = Map<String, Value>;

/// A column of `row`; null when the row lacks it (a partial update, or a
/// column the server's schema does not have).
pub fn column<'a>(row: &'a Row, name: &str) -> &'a Value {
    row.get(name).unwrap_or(&Value::Null)
}

/// Every monitored table: table -> row uuid -> row.
#[derive(Debug, Clone, Default)]
pub struct Replica {
    pub tables: BTreeMap<String, BTreeMap<String, Row>>,
}

/// What an update did to one row, for callers that react to inserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub table: String,
    pub uuid: String,
    pub inserted: bool,
}

impl Replica {
    /// The rows of `table`.
    pub fn table(&self, table: &str) -> impl Iterator<Item = (&String, &Row)> {
        self.tables.get(table).into_iter().flatten()
    }

    /// Applies a `<table-updates2>` object; returns the rows it touched.
    pub fn apply(&mut self, schema: &Schema, updates: &Value) -> Result<Vec<Change>, OvsdbError> {
        let unexpected = |value: &Value| OvsdbError::Unexpected {
            what: "table update",
            value: value.clone(),
        };
        let tables = updates.as_object().ok_or_else(|| unexpected(updates))?;
        let mut changes = Vec::new();
        for (table, rows) in tables {
            let rows = rows.as_object().ok_or_else(|| unexpected(rows))?;
            let replica = self.tables.entry(table.clone()).or_default();
            for (uuid, update) in rows {
                let inserted = apply_row(schema, table, replica, uuid, update)
                    .ok_or_else(|| unexpected(update))?;
                changes.push(Change {
                    table: table.clone(),
                    uuid: uuid.clone(),
                    inserted,
                });
            }
        }
        Ok(changes)
    }
}

/// Applies one row's update; `Some(true)` for an insert, `None` when the
/// update is not one of the four forms.
fn apply_row(
    schema: &Schema,
    table: &str,
    rows: &mut BTreeMap<String, Row>,
    uuid: &str,
    update: &Value,
) -> Option<bool> {
    let (op, value) = update.as_object()?.iter().next()?;
    match op.as_str() {
        "initial" | "insert" => {
            let mut row = value.as_object()?.clone();
            for (column, value) in &mut row {
                *value = canonical(schema.kind(table, column), value);
            }
            rows.insert(uuid.to_owned(), row);
            Some(op == "insert")
        }
        "delete" => {
            rows.remove(uuid);
            Some(false)
        }
        "modify" => {
            let row = rows.entry(uuid.to_owned()).or_default();
            for (column, diff) in value.as_object()? {
                let old = row.remove(column).unwrap_or(Value::Null);
                let kind = schema.kind(table, column);
                let new = match kind {
                    ColumnKind::Scalar => diff.clone(),
                    ColumnKind::Set => toggle_set(&old, diff),
                    ColumnKind::Map => toggle_map(&old, diff),
                };
                row.insert(column.clone(), canonical(kind, &new));
            }
            Some(false)
        }
        _ => None,
    }
}

/// A column value in one form whatever order its elements arrived in: a
/// set's atoms and a map's pairs sorted. A snapshot comes in the server's
/// order, a `modify` appends what it adds; without this, a row read after
/// a resync could iterate differently from the same row kept by diffs.
fn canonical(kind: ColumnKind, value: &Value) -> Value {
    let sort_key = |v: &Value| v.to_string();
    match kind {
        ColumnKind::Scalar => value.clone(),
        ColumnKind::Set => {
            let mut atoms = set_atoms(value);
            atoms.sort_by_cached_key(sort_key);
            json!(["set", atoms])
        }
        ColumnKind::Map => {
            let mut pairs = map_pairs(value);
            pairs.sort_by_cached_key(|(k, _)| sort_key(k));
            let pairs: Vec<Value> = pairs.into_iter().map(|(k, v)| json!([k, v])).collect();
            json!(["map", pairs])
        }
    }
}

/// The atoms of a set value: `["set", [...]]` or a single atom.
pub fn set_atoms(value: &Value) -> Vec<Value> {
    match value {
        Value::Null => Vec::new(),
        Value::Array(pair) if pair.len() == 2 && pair[0] == "set" => {
            pair[1].as_array().cloned().unwrap_or_default()
        }
        atom => vec![atom.clone()],
    }
}

/// The pairs of a map value: `["map", [[k, v], ...]]`.
pub fn map_pairs(value: &Value) -> Vec<(Value, Value)> {
    let Some(pairs) = value.as_array().filter(|p| p.len() == 2 && p[0] == "map") else {
        return Vec::new();
    };
    pairs[1]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| Some((pair.get(0)?.clone(), pair.get(1)?.clone())))
        .collect()
}

/// A set diff: each atom in `diff` is removed if present, added if not.
fn toggle_set(old: &Value, diff: &Value) -> Value {
    let mut atoms = set_atoms(old);
    for atom in set_atoms(diff) {
        match atoms.iter().position(|a| *a == atom) {
            Some(i) => {
                atoms.remove(i);
            }
            None => atoms.push(atom),
        }
    }
    json!(["set", atoms])
}

/// A map diff: a key with the same value is removed, with another value
/// replaced, absent added.
fn toggle_map(old: &Value, diff: &Value) -> Value {
    let mut pairs = map_pairs(old);
    for (key, value) in map_pairs(diff) {
        match pairs.iter().position(|(k, _)| *k == key) {
            Some(i) if pairs[i].1 == value => {
                pairs.remove(i);
            }
            Some(i) => pairs[i].1 = value,
            None => pairs.push((key, value)),
        }
    }
    let pairs: Vec<Value> = pairs.into_iter().map(|(k, v)| json!([k, v])).collect();
    json!(["map", pairs])
}

/// A string-keyed map column as a plain map.
pub fn string_map(value: &Value) -> BTreeMap<String, String> {
    map_pairs(value)
        .into_iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
        .collect()
}

/// The uuids of a set (or optional) uuid column.
pub fn uuids(value: &Value) -> Vec<String> {
    set_atoms(value).iter().filter_map(uuid_of).collect()
}

/// The uuid of a `["uuid", "..."]` atom.
pub fn uuid_of(atom: &Value) -> Option<String> {
    match atom.as_array()?.as_slice() {
        [tag, uuid] if tag == "uuid" => uuid.as_str().map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::from_json(&json!({"tables": {"Port_Binding": {"columns": {
            "logical_port": {"type": "string"},
            "mac": {"type": {"key": "string", "min": 0, "max": "unlimited"}},
            "chassis": {"type": {"key": {"type": "uuid", "refTable": "Chassis"}, "min": 0, "max": 1}},
            "datapath": {"type": {"key": {"type": "uuid", "refTable": "Datapath_Binding"}}},
            "external_ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}},
        }}}}))
        .unwrap()
    }

    #[test]
    fn column_kinds_follow_the_schema() {
        let schema = schema();
        assert_eq!(
            schema.kind("Port_Binding", "logical_port"),
            ColumnKind::Scalar
        );
        assert_eq!(schema.kind("Port_Binding", "datapath"), ColumnKind::Scalar);
        assert_eq!(
            schema.kind("Port_Binding", "chassis"),
            ColumnKind::Scalar,
            "optional"
        );
        assert_eq!(schema.kind("Port_Binding", "mac"), ColumnKind::Set);
        assert_eq!(schema.kind("Port_Binding", "external_ids"), ColumnKind::Map);
    }

    #[test]
    fn initial_modify_and_delete_keep_the_rows_exact() {
        let schema = schema();
        let mut replica = Replica::default();
        let initial = json!({"Port_Binding": {"u1": {"initial": {
            "logical_port": "p1",
            "mac": "fa:16:3e:00:00:01 10.0.0.5",
            "chassis": ["uuid", "c1"],
            "external_ids": ["map", [["neutron:device_id", "vm1"], ["k", "v"]]],
        }}}});
        replica.apply(&schema, &initial).unwrap();
        // Moved to another chassis, an IP changed, one key changed, one gone, one new.
        let modify = json!({"Port_Binding": {"u1": {"modify": {
            "mac": ["set", ["fa:16:3e:00:00:01 10.0.0.5", "fa:16:3e:00:00:01 10.0.0.6"]],
            "chassis": ["uuid", "c2"],
            "external_ids": ["map", [["neutron:device_id", "vm2"], ["k", "v"], ["new", "x"]]],
        }}}});
        let changes = replica.apply(&schema, &modify).unwrap();
        assert_eq!(
            changes,
            [Change {
                table: "Port_Binding".into(),
                uuid: "u1".into(),
                inserted: false
            }]
        );
        let row = &replica.tables["Port_Binding"]["u1"];
        assert_eq!(
            set_atoms(&row["mac"]),
            [json!("fa:16:3e:00:00:01 10.0.0.6")]
        );
        assert_eq!(uuids(&row["chassis"]), ["c2"]);
        let ids = string_map(&row["external_ids"]);
        assert_eq!(
            ids.get("neutron:device_id").map(String::as_str),
            Some("vm2")
        );
        assert_eq!(ids.get("new").map(String::as_str), Some("x"));
        assert!(!ids.contains_key("k"));
        assert_eq!(row["logical_port"], "p1");
        // Unbound: the optional column's new value is the empty set.
        let unbind = json!({"Port_Binding": {"u1": {"modify": {"chassis": ["set", []]}}}});
        replica.apply(&schema, &unbind).unwrap();
        assert!(uuids(&replica.tables["Port_Binding"]["u1"]["chassis"]).is_empty());
        let delete = json!({"Port_Binding": {"u1": {"delete": null}}});
        replica.apply(&schema, &delete).unwrap();
        assert!(replica.tables["Port_Binding"].is_empty());
    }

    #[test]
    fn a_set_reads_the_same_from_a_snapshot_and_from_diffs() {
        let schema = schema();
        let entries = ["fa:16:3e:0e:0a:4a 10.0.0.5", "fa:16:3e:00:00:01"];
        // Kept by diffs: the port's entry first, the pair's added later.
        let mut by_diffs = Replica::default();
        let insert = json!({"Port_Binding": {"u": {"insert": {"mac": entries[0]}}}});
        by_diffs.apply(&schema, &insert).unwrap();
        let add = json!({"Port_Binding": {"u": {"modify": {"mac": entries[1]}}}});
        by_diffs.apply(&schema, &add).unwrap();
        // Read again after a resync: the server's (sorted) order.
        let mut by_snapshot = Replica::default();
        let initial =
            json!({"Port_Binding": {"u": {"initial": {"mac": ["set", [entries[1], entries[0]]]}}}});
        by_snapshot.apply(&schema, &initial).unwrap();
        assert_eq!(by_diffs.tables, by_snapshot.tables);
        assert_eq!(
            set_atoms(&by_snapshot.tables["Port_Binding"]["u"]["mac"]),
            [json!(entries[1]), json!(entries[0])]
        );
    }

    #[test]
    fn inserts_are_reported_and_malformed_updates_are_errors() {
        let schema = schema();
        let mut replica = Replica::default();
        let insert = json!({"Port_Binding": {"u2": {"insert": {"logical_port": "p2"}}}});
        assert!(replica.apply(&schema, &insert).unwrap()[0].inserted);
        for bad in [
            json!([]),
            json!({"Port_Binding": 3}),
            json!({"Port_Binding": {"u": {"rename": {}}}}),
        ] {
            assert!(replica.apply(&schema, &bad).is_err(), "{bad}");
        }
    }
}
