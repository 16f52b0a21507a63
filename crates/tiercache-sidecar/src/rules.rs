//! Rules: how a changed row becomes keys and tags of a namespace.
//!
//! A rule names a table and templates with `{column}` placeholders. Each
//! template is filled from the rows a change carries: the new row of an
//! `INSERT`, the old row of a `DELETE`, both rows of an `UPDATE` (so a row
//! that moves between categories invalidates both category tags). Results
//! are deduplicated.
//!
//! Column values are Postgres's text output of the value (`42`, `books`,
//! `true`/`false` for booleans, `2024-01-02` for dates), which is how the
//! application's `Display` of a key usually reads. A template that refers to
//! a column that is NULL in a row yields nothing for that row; one that refers
//! to a column the row does not carry (an old row without `REPLICA IDENTITY
//! FULL`, an unchanged TOASTed value) yields nothing either and is counted in
//! `tiercache_sidecar_unrenderable_total`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;

use crate::config::{Config, DEFAULT_MAX_KEY_LEN};

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Column(String),
}

/// Why a key or tag template could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// The template is empty.
    #[error("empty template")]
    Empty,
    /// A `}` that closes nothing.
    #[error("unmatched `}}` at byte {at} in {template:?} (write `}}}}` for a literal brace)")]
    UnmatchedClose {
        /// Byte offset of the `}`.
        at: usize,
        /// The template.
        template: String,
    },
    /// A `{` whose placeholder is never closed.
    #[error(
        "unclosed column placeholder {{{name} in {template:?} (write `{{{{` for a literal brace)"
    )]
    Unclosed {
        /// What follows the `{`.
        name: String,
        /// The template.
        template: String,
    },
    /// A placeholder with no column name, or with a `{` in it.
    #[error("bad column placeholder {{{name}}} in {template:?}")]
    BadPlaceholder {
        /// What is between the braces.
        name: String,
        /// The template.
        template: String,
    },
}

/// A parsed key or tag template such as `category:{category}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `text`: `{name}` is a column, `{{` and `}}` are literal braces.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => {
                    return Err(TemplateError::UnmatchedClose {
                        at,
                        template: text.to_owned(),
                    });
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(TemplateError::Unclosed {
                            name,
                            template: text.to_owned(),
                        });
                    }
                    if name.is_empty() || name.contains('{') {
                        return Err(TemplateError::BadPlaceholder {
                            name,
                            template: text.to_owned(),
                        });
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Column(name));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Literal(lit));
        }
        Ok(Self {
            source: text.to_owned(),
            pieces,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The columns it refers to.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Column(c) => Some(c.as_str()),
            Piece::Literal(_) => None,
        })
    }

    /// Whether it refers to no column (a static tag such as `products`).
    pub fn is_static(&self) -> bool {
        self.columns().next().is_none()
    }

    /// Fills the template from `row`.
    pub fn render(&self, row: &Row) -> Render {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Literal(l) => out.push_str(l),
                Piece::Column(c) => match row.get(c) {
                    Some(Value::Text(v)) => out.push_str(v),
                    Some(Value::Null) => return Render::Null,
                    Some(Value::UnchangedToast) | None => return Render::Missing,
                },
            }
        }
        Render::Done(out)
    }
}

/// The result of [`Template::render`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Render {
    /// The rendered text.
    Done(String),
    /// A referenced column is NULL in the row.
    Null,
    /// A referenced column is not carried by the row.
    Missing,
}

/// A column value as the change source reports it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// The value's text output.
    Text(String),
    /// A TOASTed value that the update did not change (logical decoding does
    /// not carry it); the old row's value, if known, stands for it.
    #[serde(skip)]
    UnchangedToast,
}

/// A row: column name → value.
pub type Row = HashMap<String, Value>;

/// The operation of a row change.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new row.
    Insert,
    /// A changed row.
    Update,
    /// A removed row.
    Delete,
    /// The table was emptied; no rows are known.
    Truncate,
}

impl Op {
    /// Parses `INSERT`, `UPDATE`, `DELETE`, `TRUNCATE`.
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "INSERT" => Some(Op::Insert),
            "UPDATE" => Some(Op::Update),
            "DELETE" => Some(Op::Delete),
            "TRUNCATE" => Some(Op::Truncate),
            _ => None,
        }
    }
}

/// A change to one row (or, for `Truncate`, to a whole table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowChange {
    /// The table's schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// What happened.
    pub op: Op,
    /// The row before (UPDATE, DELETE), as far as the source carries it.
    pub old: Option<Row>,
    /// The row after (INSERT, UPDATE).
    pub new: Option<Row>,
}

/// An explicit invalidation, as sent with `pg_logical_emit_message` or
/// `pg_notify`: `{"namespace": "products", "keys": ["1"], "tags": ["x"]}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplicitInvalidation {
    /// The namespace.
    pub namespace: String,
    /// Keys as the application renders them (without namespace).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Whether the keys were created (Bloom guards add them).
    #[serde(default)]
    pub created: bool,
}

/// What one change means for one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// The namespace.
    pub namespace: String,
    /// The namespace's maximum storage key length.
    pub max_key_len: usize,
    /// Keys (without namespace), deduplicated.
    pub keys: Vec<String>,
    /// Tags, deduplicated.
    pub tags: Vec<String>,
    /// The keys were created.
    pub created: bool,
    /// When the change happened at the source, in µs since the Unix epoch.
    pub source_time_us: Option<i64>,
}

struct CompiledRule {
    index: usize,
    namespace: String,
    max_key_len: usize,
    keys: Vec<Template>,
    tags: Vec<Template>,
    warned: AtomicBool,
}

/// The compiled rules of a configuration.
pub struct RuleSet {
    by_table: HashMap<(String, String), Vec<CompiledRule>>,
    key_lens: HashMap<String, usize>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("tables", &self.by_table.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A table the rules refer to, with the columns they read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableColumns {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Referenced columns, sorted, deduplicated.
    pub columns: Vec<String>,
    /// For each referenced column, the config fields that refer to it
    /// (e.g. `rules[0].keys[0]`), for error messages.
    pub fields: Vec<(String, String)>,
    /// The indices of the rules over this table.
    pub rules: Vec<usize>,
}

struct Acc {
    keys: Vec<String>,
    tags: Vec<String>,
    seen_keys: HashSet<String>,
    seen_tags: HashSet<String>,
}

impl Acc {
    fn new() -> Self {
        Self {
            keys: Vec::new(),
            tags: Vec::new(),
            seen_keys: HashSet::new(),
            seen_tags: HashSet::new(),
        }
    }
}

impl RuleSet {
    /// Compiles the rules of a validated config.
    pub fn from_config(config: &Config) -> Result<Self, crate::config::ConfigError> {
        let mut by_table: HashMap<(String, String), Vec<CompiledRule>> = HashMap::new();
        let mut key_lens = HashMap::new();
        for (i, r) in config.rules.iter().enumerate() {
            let compile = |list: &[String], name: &str| {
                list.iter()
                    .enumerate()
                    .map(|(k, t)| {
                        Template::parse(t).map_err(|source| crate::config::ConfigError::Template {
                            field: format!("rules[{i}].{name}[{k}]"),
                            source,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            let rule = CompiledRule {
                index: i,
                namespace: r.namespace.clone(),
                max_key_len: r.max_key_len,
                keys: compile(&r.keys, "keys")?,
                tags: compile(&r.tags, "tags")?,
                warned: AtomicBool::new(false),
            };
            key_lens.insert(r.namespace.clone(), r.max_key_len);
            by_table
                .entry((r.schema.clone(), r.table.clone()))
                .or_default()
                .push(rule);
        }
        Ok(Self { by_table, key_lens })
    }

    /// Whether some rule covers `schema.table`.
    pub fn covers(&self, schema: &str, table: &str) -> bool {
        self.by_table
            .contains_key(&(schema.to_owned(), table.to_owned()))
    }

    /// Every table with rules and the columns they read, sorted by name.
    pub fn tables(&self) -> Vec<TableColumns> {
        let mut out: Vec<TableColumns> = self
            .by_table
            .iter()
            .map(|((schema, table), rules)| {
                let mut fields = Vec::new();
                for r in rules {
                    for (list, name) in [(&r.keys, "keys"), (&r.tags, "tags")] {
                        for (k, t) in list.iter().enumerate() {
                            for c in t.columns() {
                                fields.push((
                                    c.to_owned(),
                                    format!("rules[{}].{name}[{k}]", r.index),
                                ));
                            }
                        }
                    }
                }
                let mut columns: Vec<String> = fields.iter().map(|(c, _)| c.clone()).collect();
                columns.sort();
                columns.dedup();
                TableColumns {
                    schema: schema.clone(),
                    table: table.clone(),
                    columns,
                    fields,
                    rules: rules.iter().map(|r| r.index).collect(),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
        out
    }

    /// The maximum key length configured for `namespace`, or the default.
    pub fn max_key_len(&self, namespace: &str) -> usize {
        self.key_lens
            .get(namespace)
            .copied()
            .unwrap_or(DEFAULT_MAX_KEY_LEN)
    }

    /// What `change` means: one [`Planned`] per namespace with something to
    /// invalidate. Empty for a table without rules.
    pub fn plan(&self, change: &RowChange, source_time_us: Option<i64>) -> Vec<Planned> {
        let Some(rules) = self
            .by_table
            .get(&(change.schema.clone(), change.table.clone()))
        else {
            return Vec::new();
        };
        // The new row of an UPDATE may lack unchanged TOASTed values: take
        // them from the old row when it has them.
        let merged_new = match (&change.new, &change.old) {
            (Some(new), Some(old)) if new.values().any(|v| matches!(v, Value::UnchangedToast)) => {
                let mut n = new.clone();
                for (k, v) in n.iter_mut() {
                    if matches!(v, Value::UnchangedToast)
                        && let Some(o) = old.get(k)
                    {
                        *v = o.clone();
                    }
                }
                Some(n)
            }
            _ => None,
        };
        let new = merged_new.as_ref().or(change.new.as_ref());
        let rows: Vec<&Row> = match change.op {
            Op::Insert => new.into_iter().collect(),
            Op::Update => change.old.iter().chain(new).collect(),
            Op::Delete => change.old.iter().collect(),
            Op::Truncate => Vec::new(),
        };
        let mut out = Vec::new();
        for rule in rules {
            let mut acc = Acc::new();
            let mut missing = Vec::new();
            for (list, is_key) in [(&rule.keys, true), (&rule.tags, false)] {
                for t in list {
                    if t.is_static() {
                        let (v, seen) = if is_key {
                            (&mut acc.keys, &mut acc.seen_keys)
                        } else {
                            (&mut acc.tags, &mut acc.seen_tags)
                        };
                        if seen.insert(t.as_str().to_owned()) {
                            v.push(render_static(t));
                        }
                        continue;
                    }
                    if change.op == Op::Truncate {
                        missing.push(t.as_str().to_owned());
                        continue;
                    }
                    for row in &rows {
                        match t.render(row) {
                            Render::Done(s) => {
                                let (v, seen) = if is_key {
                                    (&mut acc.keys, &mut acc.seen_keys)
                                } else {
                                    (&mut acc.tags, &mut acc.seen_tags)
                                };
                                if seen.insert(s.clone()) {
                                    v.push(s);
                                }
                            }
                            Render::Null => {}
                            Render::Missing => missing.push(t.as_str().to_owned()),
                        }
                    }
                }
            }
            if !missing.is_empty() {
                metrics::counter!("tiercache_sidecar_unrenderable_total", "namespace" => rule.namespace.clone())
                    .increment(missing.len() as u64);
                if !rule.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        table = %format!("{}.{}", change.schema, change.table),
                        op = ?change.op,
                        templates = ?missing,
                        "rules[{}]: templates could not be filled (column not carried by the change: \
                         TRUNCATE, an old row without REPLICA IDENTITY FULL, or an unchanged TOAST value); \
                         warning once per rule",
                        rule.index
                    );
                }
            }
            if acc.keys.is_empty() && acc.tags.is_empty() {
                continue;
            }
            out.push(Planned {
                namespace: rule.namespace.clone(),
                max_key_len: rule.max_key_len,
                keys: acc.keys,
                tags: acc.tags,
                created: change.op == Op::Insert,
                source_time_us,
            });
        }
        out
    }

    /// An explicit invalidation as a [`Planned`].
    pub fn plan_explicit(&self, inv: ExplicitInvalidation, source_time_us: Option<i64>) -> Planned {
        Planned {
            max_key_len: self.max_key_len(&inv.namespace),
            namespace: inv.namespace,
            keys: dedup(inv.keys),
            tags: dedup(inv.tags),
            created: inv.created,
            source_time_us,
        }
    }
}

fn render_static(t: &Template) -> String {
    match t.render(&Row::new()) {
        Render::Done(s) => s,
        _ => t.as_str().to_owned(),
    }
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    v.into_iter().filter(|s| seen.insert(s.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, Option<&str>)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    match v {
                        Some(v) => Value::Text(v.to_string()),
                        None => Value::Null,
                    },
                )
            })
            .collect()
    }

    fn rules() -> RuleSet {
        let c = Config::parse(
            r#"
            [source]
            kind = "notify"
            database_url = "postgres://u@h/db"
            [bus]
            kind = "redis"
            url = "redis://h:1"
            [[rules]]
            table = "products"
            namespace = "products"
            keys = ["{id}", "sku:{sku}"]
            tags = ["products", "category:{category}"]
            [[rules]]
            table = "products"
            namespace = "catalog"
            keys = ["{{lit}}-{category}"]
            max_key_len = 100
            "#,
        )
        .unwrap();
        RuleSet::from_config(&c).unwrap()
    }

    #[test]
    fn templates_parse_and_reject() {
        let t = Template::parse("a{{b}}{c}d").unwrap();
        assert_eq!(t.columns().collect::<Vec<_>>(), vec!["c"]);
        assert_eq!(
            t.render(&row(&[("c", Some("X"))])),
            Render::Done("a{b}Xd".into())
        );
        let e = Template::parse("{idd").unwrap_err();
        assert!(matches!(e, TemplateError::Unclosed { ref name, .. } if name == "idd"));
        assert_eq!(
            e.to_string(),
            "unclosed column placeholder {idd in \"{idd\" (write `{{` for a literal brace)"
        );
        assert_eq!(
            Template::parse("x}").unwrap_err().to_string(),
            "unmatched `}` at byte 1 in \"x}\" (write `}}` for a literal brace)"
        );
        assert_eq!(
            Template::parse("{}").unwrap_err().to_string(),
            "bad column placeholder {} in \"{}\""
        );
        assert_eq!(Template::parse("").unwrap_err(), TemplateError::Empty);
    }

    #[test]
    fn update_uses_old_and_new_rows() {
        let rs = rules();
        let change = RowChange {
            schema: "public".into(),
            table: "products".into(),
            op: Op::Update,
            old: Some(row(&[
                ("id", Some("1")),
                ("sku", Some("A")),
                ("category", Some("books")),
            ])),
            new: Some(row(&[
                ("id", Some("1")),
                ("sku", Some("A")),
                ("category", Some("games")),
            ])),
        };
        let plans = rs.plan(&change, Some(5));
        assert_eq!(plans.len(), 2);
        let p = &plans[0];
        assert_eq!(p.namespace, "products");
        assert_eq!(p.keys, vec!["1", "sku:A"]);
        assert_eq!(p.tags, vec!["products", "category:books", "category:games"]);
        assert!(!p.created);
        assert_eq!(p.source_time_us, Some(5));
        assert_eq!(plans[1].namespace, "catalog");
        assert_eq!(plans[1].keys, vec!["{lit}-books", "{lit}-games"]);
        assert_eq!(plans[1].max_key_len, 100);
    }

    #[test]
    fn insert_is_created_delete_uses_old_nulls_skip() {
        let rs = rules();
        let mut change = RowChange {
            schema: "public".into(),
            table: "products".into(),
            op: Op::Insert,
            old: None,
            new: Some(row(&[
                ("id", Some("7")),
                ("sku", None),
                ("category", Some("x")),
            ])),
        };
        let p = &rs.plan(&change, None)[0];
        assert!(p.created);
        assert_eq!(p.keys, vec!["7"]);
        change.op = Op::Delete;
        change.old = change.new.take();
        let p = &rs.plan(&change, None)[0];
        assert!(!p.created);
        assert_eq!(p.keys, vec!["7"]);
        assert_eq!(p.tags, vec!["products", "category:x"]);
    }

    #[test]
    fn unchanged_toast_is_taken_from_old_row_and_truncate_keeps_static_tags() {
        let rs = rules();
        let mut new = row(&[("id", Some("1")), ("sku", Some("A"))]);
        new.insert("category".into(), Value::UnchangedToast);
        let change = RowChange {
            schema: "public".into(),
            table: "products".into(),
            op: Op::Update,
            old: Some(row(&[
                ("id", Some("1")),
                ("sku", Some("A")),
                ("category", Some("b")),
            ])),
            new: Some(new),
        };
        assert_eq!(
            rs.plan(&change, None)[0].tags,
            vec!["products", "category:b"]
        );
        let t = RowChange {
            op: Op::Truncate,
            old: None,
            new: None,
            ..change
        };
        let plans = rs.plan(&t, None);
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].tags, vec!["products"]);
        assert!(plans[0].keys.is_empty());
    }

    #[test]
    fn unruled_table_is_ignored() {
        let rs = rules();
        let change = RowChange {
            schema: "public".into(),
            table: "audit".into(),
            op: Op::Insert,
            old: None,
            new: Some(row(&[("id", Some("1"))])),
        };
        assert!(rs.plan(&change, None).is_empty());
        assert!(!rs.covers("public", "audit"));
    }

    #[test]
    fn tables_lists_referenced_columns() {
        let t = rules().tables();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].columns, vec!["category", "id", "sku"]);
    }
}
