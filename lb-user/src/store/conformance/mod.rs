//! Kubernetes' own validation tables, as manifests: each row of
//! `pkg/apis/core/validation` (TestValidateServiceCreate,
//! TestValidateServiceExternalTrafficPolicy, TestValidateServiceUpdate,
//! TestValidatePorts) and `pkg/apis/discovery/validation` (TestValidateEndpointSlice,
//! …Create, …Update) written as the v1 object a user would apply, with the answer
//! the API server gives it end to end (defaulting, validation, the REST
//! strategy's update rules, the allocators) in a single-stack IPv4 cluster with
//! service CIDR 10.96.0.0/12 and nodePorts 30000-32767, and again in a dual-stack
//! cluster that adds 2001::/112 (where a row's answer differs, it says so).
//!
//! Translations, so that a row tests what it was written for: test addresses
//! outside the CIDR (1.2.3.x, 10.0.0.x) become 10.96.0.x and nodePorts outside the
//! range (1, 12345, 34567) become 30001, 31234, 32567. Where the Go table calls
//! the validation function alone and the API server answers otherwise (v1
//! defaults fill `type: ""`; an update without `clusterIP` keeps the allocated
//! one; an old object "with an empty clusterIP" has one allocated), the row wants
//! the API server's answer, and says so. Rows that cannot be set up in the
//! single-stack cluster (their old object is dual-stack, refused at create) are
//! skipped there with the reason, and run in the dual-stack one.
//!
//! Each table is run through `parse_manifest` and `apply::apply` on an empty
//! store: what `lb apply` does, without a disk.

mod endpoint_slice;
mod pod;
mod service;

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::{
    alloc::Allocation,
    apply::{Mode, apply},
};
use crate::{model::parse_manifest, state::State};

/// What the API server answers.
#[derive(Debug, Clone, Copy)]
pub enum Want {
    Accept,
    /// Refused, naming this field (its path, or the start of it).
    Refuse(&'static str),
    /// Not run: the row cannot be set up as a manifest in this cluster.
    Skip(&'static str),
}

pub struct Row {
    pub table: &'static str,
    pub name: String,
    /// The object stored before `new` is applied (update tables).
    pub old: Option<Value>,
    pub new: Value,
    pub want: Want,
    /// What a dual-stack API server answers, when it answers otherwise.
    pub dual: Option<Want>,
}

impl Row {
    pub fn create(table: &'static str, name: impl Into<String>, new: Value, want: Want) -> Self {
        Row {
            table,
            name: name.into(),
            old: None,
            new,
            want,
            dual: None,
        }
    }

    pub fn update(
        table: &'static str,
        name: impl Into<String>,
        old: Value,
        new: Value,
        want: Want,
    ) -> Self {
        Row {
            table,
            name: name.into(),
            old: Some(old),
            new,
            want,
            dual: None,
        }
    }

    /// The row's answer on a dual-stack cluster, where it differs.
    pub fn dual(mut self, want: Want) -> Self {
        self.dual = Some(want);
        self
    }
}

/// Every object of the tables (old and new), for tests of reading manifests.
pub(crate) fn objects() -> Vec<Value> {
    service::rows()
        .into_iter()
        .chain(endpoint_slice::rows())
        .chain(pod::rows())
        .flat_map(|r| r.old.into_iter().chain([r.new]))
        .collect()
}

/// lb's answer: `Ok` stored, `Err` the error it printed.
fn answer(row: &Row, alloc: &Allocation) -> Result<(), String> {
    let mut state = State::default();
    let mut write = |object: &Value, revision| {
        let docs = parse_manifest("row.json", &object.to_string()).map_err(|e| e.to_string())?;
        apply(
            &mut state,
            &docs,
            alloc,
            Mode::Apply,
            Timestamp::now(),
            revision,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    if let Some(old) = &row.old {
        write(old, 1).map_err(|e| format!("setup refused: {e}"))?;
    }
    write(&row.new, 2)
}

/// Runs the rows; returns the rows where lb and the API server differ (name,
/// what lb said), and prints every skipped row with its reason.
fn disagreements(rows: &[Row], cluster: Cluster) -> (usize, Vec<(String, String)>) {
    let alloc = cluster.allocation();
    let mut counted = 0;
    let mut differ = Vec::new();
    for row in rows {
        let label = format!("{}: {}", row.table, row.name);
        let want = match cluster {
            Cluster::SingleStack => row.want,
            Cluster::DualStack => row.dual.unwrap_or(row.want),
        };
        let got = match want {
            Want::Skip(why) => {
                println!("skipped  {label} ({why})");
                continue;
            }
            _ => answer(row, &alloc),
        };
        counted += 1;
        match (want, &got) {
            (Want::Accept, Ok(())) => {}
            (Want::Refuse(field), Err(e)) if e.contains(field) => {}
            (Want::Accept, Err(e)) => differ.push((label, format!("lb refused: {e}"))),
            (Want::Refuse(field), Err(e)) => {
                differ.push((label, format!("lb refused, not naming {field}: {e}")))
            }
            (Want::Refuse(field), Ok(())) => differ.push((
                label,
                format!("lb STORED what the API server refuses ({field})"),
            )),
            (Want::Skip(_), _) => unreachable!(),
        }
    }
    (counted, differ)
}

/// Where lb answers otherwise on purpose, by row label and why.
const KNOWN: &[(&str, &str)] = &[(
    "ServiceCreate: valid duplicate ports (with different protocols)",
    "SCTP: lb's data plane does not balance it (this kernel has none), so a Service asking for it is refused rather than left unserved",
)];

/// The cluster a table runs in.
#[derive(Debug, Clone, Copy)]
enum Cluster {
    /// Service CIDR 10.96.0.0/12 alone.
    SingleStack,
    /// 10.96.0.0/12 and 2001::/112 (the tables' IPv6 addresses are 2001::x).
    DualStack,
}

impl Cluster {
    fn allocation(self) -> Allocation {
        let mut alloc = Allocation::default();
        if let Cluster::DualStack = self {
            alloc.service_cidrs = super::alloc::parse_service_cidrs("10.96.0.0/12,2001::/112")
                .expect("the dual-stack ranges parse");
        }
        alloc
    }
}

#[test]
fn lb_answers_as_the_api_server_on_kubernetes_validation_tables() {
    agrees_on_the_tables(Cluster::SingleStack);
}

#[test]
fn lb_answers_as_a_dual_stack_api_server_on_kubernetes_validation_tables() {
    agrees_on_the_tables(Cluster::DualStack);
}

fn agrees_on_the_tables(cluster: Cluster) {
    let rows: Vec<Row> = service::rows()
        .into_iter()
        .chain(endpoint_slice::rows())
        .chain(pod::rows())
        .collect();
    let (counted, differ) = disagreements(&rows, cluster);
    let skipped = rows.len() - counted;
    for (label, why) in &differ {
        println!("differs  {label}: {why}");
    }
    let agreement = 100.0 * (counted - differ.len()) as f64 / counted as f64;
    println!(
        "{cluster:?}: {} rows: {counted} run, {skipped} skipped; lb agrees on {} ({agreement:.1}%)",
        rows.len(),
        counted - differ.len()
    );
    let stored: Vec<_> = differ
        .iter()
        .filter(|(_, w)| w.contains("STORED"))
        .collect();
    assert!(
        stored.is_empty(),
        "lb stores what the API server refuses: {stored:#?}"
    );
    let unknown: Vec<_> = differ
        .iter()
        .filter(|(label, _)| !KNOWN.iter().any(|(k, _)| k == label))
        .collect();
    assert!(unknown.is_empty(), "unexplained differences: {unknown:#?}");
    assert!(agreement >= 98.0, "agreement {agreement:.1}% < 98%");
    assert!(counted >= 250, "the tables shrank: {counted} rows run");
}
