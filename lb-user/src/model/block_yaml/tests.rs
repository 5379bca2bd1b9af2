use rand::{Rng as _, SeedableRng as _};

use super::*;

/// The documents of `text` as libyaml reads them (what `documents` must equal).
fn libyaml(text: &str) -> Result<Vec<(Value, usize)>, String> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| {
            super::super::decode::value(d, text.len())
                .map(|r| (r.value, r.json_at_most))
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// Whether `documents` read `text`; when it did, it read what libyaml reads, and
/// its nodes deserialize (as any value, through `node`) to that value.
fn same(text: &str) -> bool {
    let Some(docs) = documents(text) else {
        return false;
    };
    let ours: Vec<(Value, usize)> = docs
        .into_iter()
        .map(|r| (r.value, r.json_at_most))
        .collect();
    let deserialized: Vec<Value> = trees(text)
        .expect("read as documents were")
        .iter()
        .map(|t| serde::Deserialize::deserialize(&t.node).expect("a value"))
        .collect();
    let values: Vec<&Value> = ours.iter().map(|(v, _)| v).collect();
    assert_eq!(deserialized.iter().collect::<Vec<_>>(), values, "{text:?}");
    assert_eq!(Ok(ours), libyaml(text), "{text:?}");
    true
}

/// Scalars as they are written: every kind serde_yaml_ng resolves, edges of each
/// and what looks like one and is not, quoted ones, indicators.
const SCALARS: &[&str] = &[
    "~",
    "null",
    "Null",
    "NULL",
    "nULL",
    "true",
    "True",
    "TRUE",
    "tRUE",
    "false",
    "yes",
    "no",
    "on",
    "0",
    "00",
    "0123",
    "-0123",
    "+0123",
    "-0",
    "+0",
    "1",
    "-1",
    "+1",
    "++1",
    "+-1",
    "0x1F",
    "0x",
    "-0x1F",
    "+0x1F",
    "0x-1",
    "0x+1",
    "0o17",
    "0o8",
    "-0o17",
    "0b101",
    "0b2",
    "-0b1",
    "1.5",
    "-1.5",
    "+1.5",
    "1e3",
    "1E3",
    "-1e-3",
    ".5",
    "5.",
    ".inf",
    "-.inf",
    "+.inf",
    ".Inf",
    "-.INF",
    ".NaN",
    ".nan",
    ".NAN",
    "nan",
    "inf",
    "Infinity",
    "-inf",
    "1_000",
    "1e400",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "340282366920938463463374607431768211456",
    "10.100.0.1",
    "fd00::1",
    "::1",
    "1:2",
    "2001-12-14",
    "12:30:00",
    "1.2.3",
    "3s",
    "-",
    "--",
    "-a",
    "?a",
    "? a",
    ":a",
    ": a",
    "a:b",
    "a: b",
    "a:",
    "http://x:80/y",
    "a#b",
    "a #b",
    "a # b",
    "#a",
    "'q'",
    "'it''s'",
    "''",
    "'a'b",
    "\"d\"",
    "\"\"",
    "\"a\\nb\"",
    "\"#x\"",
    "\"a\" #c",
    "'a' #c",
    "a b  c",
    "a,b",
    "a[0]",
    "a]",
    "a}",
    "a{b",
    "{a: 1}",
    "[1, 2]",
    "[]",
    "{}",
    "[a, [b, {c: d}]]",
    "{a: [1, 2], b: {c: ~}}",
    "{\"a\":1}",
    "{'a': 1}",
    "{\"a\" : 1}",
    "[a, ]",
    "[, a]",
    "{a: }",
    "{a: ,}",
    "{a}",
    "{a, b: c}",
    "[a: b]",
    "[a:b]",
    "[a:,b]",
    "[a:?]",
    "{a:b}",
    "{a: b, a: c}",
    "[a #c]",
    "[a]#c",
    "[a] #c",
    "[a] b",
    "&a x",
    "*a",
    "!!str 1",
    "!x y",
    "|",
    ">",
    "@x",
    "`x",
    "%x",
    "x  ",
    "{a: {b: {c: [d, e]}}}",
    "[\"a,b\", 'c]d']",
    "{k: 'v: w'}",
    "{k: a:b}",
    "{k: -1}",
    "[-, a]",
    "[-a]",
    "[?a]",
    "{?a: b}",
    "{:a: b}",
    "a\tb",
    "\u{e9}",
];

#[test]
fn every_scalar_is_read_as_libyaml_reads_it_or_left_to_it() {
    let mut read = 0;
    for s in SCALARS {
        for text in [
            format!("k: {s}\n"),
            format!("- {s}\n"),
            format!("[{s}]\n"),
            format!("{{k: {s}}}\n"),
            format!("{s}: v\n"),
            format!("{{{s}: v}}\n"),
            format!("{s}\n"),
            format!("a:\n  b: {s}\n  c: [{s}, x]\n- x\n"),
            format!("a:\n- {s}\n- k: {s}\n  l: {s}\nb: {s}\n"),
        ] {
            read += usize::from(same(&text));
        }
    }
    // Most are read here; the rest was left to libyaml (and checked above when not).
    assert!(read > SCALARS.len() * 5, "{read}");
}

#[test]
fn structures_are_read_as_libyaml_reads_them_or_left_to_it() {
    let read = [
        "",
        "# only a comment\n",
        "---\n",
        "---\n---\n",
        "a: 1\n---\nb: 2\n---\n",
        "---\na: 1\n",
        "a: 1\n...\n",
        "--- a: 1\n",
        "--- # c\na: 1\n",
        "a:\n  b:\n    c: d\n  e: f\ng: h\n",
        "a:\n  - 1\n  - 2\nb: 3\n",
        "a:\n- 1\n- 2\nb: 3\n",
        "a:\n- 1\n-\n- 3\n",
        "- a: 1\n  b: 2\n- c: 3\n",
        "-   a: 1\n    b: 2\n",
        "- a: 1\n   b: 2\n",
        "- a: 1\n b: 2\n",
        "- - a\n  - b\n",
        "-\n  - a\n",
        "-\n  a: b\n",
        "- # c\n  a: b\n",
        "a: # c\n  b: c\n",
        "a: b\n  # deeper comment\nc: d\n",
        "a: b\n  c\n",
        "a: b\n\n  c\n",
        "a:\n  b\n",
        "a:\n  b\n  c\n",
        "a: [1,\n  2]\n",
        "a: {b: 1,\n  c: 2}\n",
        "a: 'x\n  y'\n",
        "a: \"x\n  y\"\n",
        "a: |\n  x\n",
        "a: >-\n  x\n",
        "a: &x 1\nb: *x\n",
        "<<: {a: 1}\n",
        "a: 1\na: 2\n",
        "a: 1\n  b: 2\n",
        "  a: 1\n  b: 2\n",
        "  a: 1\nb: 2\n",
        "a:\n    b: 1\n  c: 2\n",
        "a:\tb\n",
        "a: b\r\nc: d\r\n",
        "\u{feff}a: b\n",
        "a: caf\u{e9}\n",
        "? a\n: b\n",
        "a: b: c\n",
        "\"a\": b\n",
        "'a': b\n",
        "\"a\" : b\n",
        "\"a\":b\n",
        "a:b\n",
        "%YAML 1.2\n---\na: 1\n",
        "a: 1 # c\nb: 'x' # c\nc: [1] # c\nd: {e: f} # c\n",
        "a: 'x'y\n",
        "a: [1]x\n",
        "key with spaces: v\n",
        "k: v with  two  spaces\n",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: {app.kubernetes.io/name: web, 'helm.sh/chart': x-1.0}\n  annotations:\n    a.b/c: \"true\"\nspec:\n  ports:\n  - {port: 80, targetPort: http}\n  selector: {app: web}\n",
    ];
    let mut n = 0;
    for text in read {
        n += usize::from(same(text));
    }
    assert!(n > 20, "{n}");
    let deep = format!("{}x\n", "- ".repeat(80));
    same(&deep);
    let deep: String = (0..80).map(|i| format!("{}k:\n", "  ".repeat(i))).collect();
    same(&deep);
    let long_key = format!("{}: v\n", "k".repeat(1500));
    assert!(!same(&long_key) || libyaml(&long_key).is_ok());
    // Mappings past the keys compared one by one: a key twice anywhere in them
    // is libyaml's (its error); without, they are read here.
    for n in [KEYS_COMPARED, KEYS_COMPARED + 1, 40] {
        let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
        let block: String = keys.iter().map(|k| format!("{k}: 1\n")).collect();
        let flow = format!("a: {{{}}}\n", keys.join(": 1, ") + ": 1");
        for text in [&block, &flow] {
            assert!(same(text), "{text}");
        }
        for twice in [0, n / 2, n - 1] {
            let block = format!("{block}{}: 2\n", keys[twice]);
            let flow = flow.replace("}", &format!(", {}: 2}}", keys[twice]));
            for text in [block, flow] {
                assert!(!same(&text) && libyaml(&text).is_err(), "{text}");
            }
        }
    }
}

/// The manifests lb's own users write (the examples, the deployment, the
/// benchmarks' and tests' generated ones) are read here, as libyaml reads them.
#[test]
fn the_manifests_users_write_are_read_here() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for f in [
        "examples/load-balancer-service.yaml",
        "examples/myapp-pod-2.yaml",
        "examples/myapp-pod.yaml",
        "examples/node-port-service.yaml",
        "deploy/lb.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        assert!(same(&text), "{f} is read here");
    }
    let pods = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s0\nspec:\n  type: NodePort\n  clusterIP: 10.96.1.0\n  selector: {app: s0}\n  ports:\n  - {name: web, port: 80, protocol: UDP, targetPort: 8080, nodePort: 30080}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: s0-0\n  labels: {app: s0}\nspec:\n  nodeName: node1\n  containers: [{name: c, image: app}]\nstatus:\n  podIP: 10.100.0.1\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s0-1\n  labels: {kubernetes.io/service-name: s0}\n  annotations: {lb.bench/generation: \"0\"}\naddressType: IPv4\nports:\n- {name: web, port: 8080, protocol: UDP}\nendpoints:\n- addresses: [10.100.0.1]\n  conditions: {ready: true}\n---\n";
    assert!(same(pods));
    assert_eq!(documents(pods).unwrap().len(), 4);
}

/// Random documents (trees of tricky scalars in block and flow styles, with
/// comments): each read here is what libyaml reads.
#[test]
fn random_documents_are_read_as_libyaml_reads_them_or_left_to_it() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut read = 0;
    const DOCS: usize = 3_000;
    for _ in 0..DOCS {
        let mut text = String::new();
        block(&mut rng, &mut text, 0, 0);
        read += usize::from(same(&text));
    }
    assert!(read > DOCS / 3, "{read} of {DOCS}");
}

fn scalar(rng: &mut rand::rngs::StdRng) -> &'static str {
    const PLAIN: &[&str] = &[
        "web",
        "10.0.0.1",
        "80",
        "a b",
        "x-y",
        "true",
        "~",
        "0x10",
        "1.5",
        "0777",
        "''",
        "'a''b'",
        "\"q\"",
        "a#b",
        "http://h:1/p",
        "-1",
        "null",
        "TCP",
        ".inf",
        "s0-1",
    ];
    if rng.random_ratio(1, 4) {
        SCALARS[rng.random_range(0..SCALARS.len())]
    } else {
        PLAIN[rng.random_range(0..PLAIN.len())]
    }
}

fn flow(rng: &mut rand::rngs::StdRng, out: &mut String, depth: usize) {
    match rng.random_range(0..4) {
        0 if depth < 3 => {
            out.push('[');
            for i in 0..rng.random_range(0..4) {
                if i > 0 {
                    out.push_str(", ");
                }
                flow(rng, out, depth + 1);
            }
            out.push(']');
        }
        1 if depth < 3 => {
            out.push('{');
            for i in 0..rng.random_range(0..4) {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&format!("k{i}: "));
                flow(rng, out, depth + 1);
            }
            out.push('}');
        }
        _ => out.push_str(scalar(rng)),
    }
}

fn block(rng: &mut rand::rngs::StdRng, out: &mut String, indent: usize, depth: usize) {
    let pad = " ".repeat(indent);
    let as_map = rng.random_bool(0.6);
    for i in 0..rng.random_range(1..4) {
        if rng.random_ratio(1, 10) {
            out.push_str(&format!("{pad}# a comment\n"));
        }
        let head = if as_map {
            format!("{pad}k{i}:")
        } else {
            format!("{pad}-")
        };
        out.push_str(&head);
        match rng.random_range(0..5) {
            0 if depth < 4 => {
                out.push('\n');
                let deeper = indent + if as_map && rng.random_bool(0.3) { 0 } else { 2 };
                if deeper == indent {
                    // A sequence at its key's indentation.
                    for _ in 0..rng.random_range(1..3) {
                        out.push_str(&format!("{pad}- {}\n", scalar(rng)));
                    }
                } else {
                    block(rng, out, deeper, depth + 1);
                }
            }
            1 => {
                out.push(' ');
                flow(rng, out, 0);
                out.push('\n');
            }
            2 if !as_map && depth < 4 => {
                // A mapping starting on the dash's line.
                out.push_str(&format!(" a: {}\n{pad}  b: ", scalar(rng)));
                flow(rng, out, 1);
                out.push('\n');
            }
            _ => {
                out.push(' ');
                out.push_str(scalar(rng));
                if rng.random_ratio(1, 8) {
                    out.push_str(" # trailing");
                }
                out.push('\n');
            }
        }
    }
}

/// Manifests with random edits (a YAML indicator, a space, a line break or a
/// letter inserted, removed or replaced): each read here is what libyaml reads.
#[test]
fn edited_manifests_are_read_as_libyaml_reads_them_or_left_to_it() {
    const BASE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web # the name\n  labels: {app: web, 'a.b/c': \"d\"}\nspec:\n  type: NodePort\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n  - name: dns\n    port: 53\n    protocol: UDP\n  selector:\n    app: web\n  ips:\n  - 10.0.0.1\n  -\n    - x\n---\nkind: Pod\nstatus: {podIP: 10.0.0.2, conditions: [{type: Ready, status: 'True'}]}\n";
    const OTHER: &str = "items:\n- a: 1\n  b:\n  - c: [x, {y: 'z''s'}]\n    d: -1\n  e: {}\n-   f: \"#g\"\n    h: []\n-\n  - nested\n-\n  i: ~\n'j k': {l: [1, 2, {m: n}], o: p}\n\"q\": r:s\nt: u v  w\n";
    const EDITS: &[u8] = b" \n:-#'\"[]{},a1?&*!|>.~0";
    assert!(
        same(BASE) && same(OTHER),
        "the unedited manifests are read here"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (mut read, mut left) = (0, 0);
    for n in 0..20_000 {
        let base = if n % 2 == 0 { BASE } else { OTHER };
        let mut text = base.as_bytes().to_vec();
        for _ in 0..rng.random_range(1..5) {
            let at = rng.random_range(0..text.len());
            let c = EDITS[rng.random_range(0..EDITS.len())];
            match rng.random_range(0..3) {
                0 => text.insert(at, c),
                1 => {
                    text.remove(at);
                }
                _ => text[at] = c,
            }
        }
        let text = String::from_utf8(text).unwrap();
        if same(&text) {
            read += 1;
        } else {
            left += 1;
        }
    }
    // (Most edits make an error or a construct left to libyaml.)
    assert!(read > 4_000 && left > 4_000, "read {read}, left {left}");
}
