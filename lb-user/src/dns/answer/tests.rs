use hickory_proto::op::{MessageType, Query};

use super::*;
use crate::{state::Tracked, store::apply::applied};

fn zone(yaml: &str) -> Zone {
    Zone::of("cluster.local", &[], &Tracked::new(applied(yaml).into()))
}

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.80\n  ports:\n  - {name: http, port: 80}\n";

fn ask(name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
    let mut q = Message::query();
    q.metadata.id = 0x1234;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        q.set_edns(e);
    }
    q.to_vec().unwrap()
}

/// The answer to `bytes`, encoded as the UDP listener would and decoded again.
fn reply(z: &Zone, bytes: &[u8]) -> Message {
    match answer(z, bytes, false) {
        Some((Outcome::Reply(r), room)) => Message::from_vec(&encode(&r, room)).unwrap(),
        other => panic!("not a reply: {other:?}"),
    }
}

#[test]
fn names_in_the_zone_are_answered_with_authority() {
    let z = zone(WEB);
    let r = reply(
        &z,
        &ask("WEB.default.svc.cluster.local.", RecordType::A, false),
    );
    assert_eq!(r.metadata.id, 0x1234);
    assert_eq!(r.metadata.message_type, MessageType::Response);
    assert!(r.metadata.authoritative && r.metadata.recursion_desired);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.queries.len(), 1);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].ttl, TTL);
    assert_eq!(
        r.answers[0].data,
        RData::A(A("10.96.0.80".parse().unwrap()))
    );
    // NODATA and NXDOMAIN carry the zone's SOA, for resolvers' negative caches.
    let nodata = reply(
        &z,
        &ask("web.default.svc.cluster.local.", RecordType::AAAA, false),
    );
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);
    let nx = reply(
        &z,
        &ask("gone.default.svc.cluster.local.", RecordType::A, false),
    );
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
    // SRV answers bring their target's address along.
    let srv = reply(
        &z,
        &ask(
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
            true,
        ),
    );
    assert_eq!(srv.answers.len(), 1);
    assert_eq!(srv.additionals.len(), 1);
    assert!(srv.edns.is_some(), "an EDNS query gets an EDNS answer");
}

#[test]
fn other_names_are_forwarded_and_other_operations_refused() {
    let z = zone(WEB);
    assert!(matches!(
        answer(&z, &ask("example.com.", RecordType::A, false), true),
        Some((Outcome::Forward(_), 512))
    ));
    let Some((Outcome::Forward(q), _)) =
        answer(&z, &ask("example.com.", RecordType::A, false), false)
    else {
        panic!()
    };
    let r = refused(&q);
    assert_eq!(
        (r.metadata.id, r.metadata.response_code),
        (0x1234, ResponseCode::Refused)
    );
    // A class other than IN, an operation other than QUERY, two questions.
    let mut chaos = Message::from_vec(&ask("version.bind.", RecordType::TXT, false)).unwrap();
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(
        reply(&z, &chaos.to_vec().unwrap()).metadata.response_code,
        ResponseCode::Refused
    );
    let mut notify = Message::from_vec(&ask("cluster.local.", RecordType::SOA, false)).unwrap();
    notify.metadata.op_code = OpCode::Notify;
    assert_eq!(
        reply(&z, &notify.to_vec().unwrap()).metadata.response_code,
        ResponseCode::NotImp
    );
    let mut two = Message::from_vec(&ask("cluster.local.", RecordType::SOA, false)).unwrap();
    two.add_query(Query::query(
        Name::from_ascii("cluster.local.").unwrap(),
        RecordType::NS,
    ));
    assert_eq!(
        reply(&z, &two.to_vec().unwrap()).metadata.response_code,
        ResponseCode::FormErr
    );
}

#[test]
fn malformed_queries_get_formerr_and_answers_get_nothing() {
    let z = zone(WEB);
    let good = ask("web.default.svc.cluster.local.", RecordType::A, false);
    // Cut short inside the question: FORMERR with the query's id.
    let r = reply(&z, &good[..good.len() - 3]);
    assert_eq!(
        (r.metadata.id, r.metadata.response_code),
        (0x1234, ResponseCode::FormErr)
    );
    // Shorter than a header, or itself a response: no answer at all.
    assert!(answer(&z, &good[..11], false).is_none());
    let mut response = good.clone();
    response[2] |= 0x80;
    assert!(answer(&z, &response, false).is_none());
    // Every prefix and every one-byte corruption is answered or dropped, never a panic.
    for n in 0..good.len() {
        let _ = answer(&z, &good[..n], true);
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[n] ^= 1 << bit;
            let _ = answer(&z, &bad, true);
        }
    }
}

#[test]
fn an_answer_too_large_for_udp_is_truncated_and_whole_over_tcp() {
    let pods: String = (0..100)
        .map(|i| format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  labels: {{app: big}}\nspec:\n  containers: [{{name: c, image: i}}]\nstatus:\n  podIP: 10.244.1.{i}\n---\n"))
        .collect();
    let z = zone(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: big\nspec:\n  clusterIP: None\n  selector: {{app: big}}\n---\n{pods}"
    ));
    for edns in [false, true] {
        let bytes = ask("big.default.svc.cluster.local.", RecordType::A, edns);
        let Some((Outcome::Reply(r), room)) = answer(&z, &bytes, false) else {
            panic!()
        };
        assert_eq!(room, if edns { 1232 } else { 512 });
        let udp = encode(&r, room);
        assert!(udp.len() <= room);
        let udp = Message::from_vec(&udp).unwrap();
        assert!(udp.metadata.truncation);
        let tcp = Message::from_vec(&encode(&r, 65535)).unwrap();
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 100);
    }
}
