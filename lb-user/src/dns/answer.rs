//! A query's answer from the zone, as an authoritative server gives it: records
//! with the AA bit; NXDOMAIN and NODATA with the zone's SOA (so resolvers cache the
//! negative answer for its TTL); FORMERR for what does not parse, NOTIMP for other
//! operations, REFUSED for other classes; names outside the zone for the server to
//! forward (or refuse). The wire format is hickory-proto's. Pure: no sockets.

use hickory_proto::{
    op::{Edns, Message, OpCode, ResponseCode},
    rr::{
        DNSClass, Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT},
    },
};

use super::zone::{Data, Lookup, TTL, Want, Zone, fqdn};

/// The largest UDP answer offered to EDNS clients (the DNS flag day's 1232 bytes:
/// no IP fragmentation on any usual path).
pub const EDNS_PAYLOAD: u16 = 1232;
/// The largest UDP answer to a client without EDNS (RFC 1035).
pub const PLAIN_PAYLOAD: usize = 512;

/// What to do with a query.
#[derive(Debug)]
pub enum Outcome {
    /// Send this answer.
    Reply(Message),
    /// Not the zone's: forward the query as it came, or refuse it
    /// ([`refused`]) when there is nowhere to forward.
    Forward(Message),
    /// An alias out of the zone (an ExternalName): the upstream's records of
    /// `target` are appended to `reply` (as CoreDNS does), or it goes as it is.
    Chase {
        reply: Message,
        target: Name,
        rtype: RecordType,
    },
}

/// The outcome of the query in `bytes` and how large its answer may be over UDP;
/// None for what gets no answer at all (too short to hold a header, or itself an
/// answer: never reflected). `recursion`: other names are forwarded.
pub fn answer(zone: &Zone, bytes: &[u8], recursion: bool) -> Option<(Outcome, usize)> {
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        return None;
    }
    let query = match Message::from_vec(bytes) {
        Ok(q) => q,
        Err(_) => {
            let id = u16::from_be_bytes([bytes[0], bytes[1]]);
            let op = OpCode::from_u8((bytes[2] >> 3) & 0x0f);
            let reply = Message::error_msg(id, op, ResponseCode::FormErr);
            return Some((Outcome::Reply(reply), PLAIN_PAYLOAD));
        }
    };
    let room = udp_limit(&query);
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = recursion;
    reply.metadata.checking_disabled = query.metadata.checking_disabled;
    reply.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        reply.set_edns(edns);
    }
    let refuse = |mut reply: Message, code| {
        reply.metadata.response_code = code;
        Some((Outcome::Reply(reply), room))
    };
    if query.metadata.op_code != OpCode::Query {
        return refuse(reply, ResponseCode::NotImp);
    }
    if query.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return refuse(reply, ResponseCode::BADVERS);
    }
    let [q] = query.queries.as_slice() else {
        return refuse(reply, ResponseCode::FormErr);
    };
    if q.query_class() != DNSClass::IN {
        return refuse(reply, ResponseCode::Refused);
    }
    let name = q.name().to_lowercase().to_ascii();
    let name = fqdn(&name);
    let rtype = q.query_type();
    let lookup = zone.lookup(&name, want(rtype));
    reply.metadata.authoritative = !matches!(lookup, Lookup::Outside);
    match lookup {
        Lookup::Outside => Some((Outcome::Forward(query), room)),
        Lookup::NxDomain => {
            reply.metadata.response_code = ResponseCode::NXDomain;
            reply.add_authority(soa(zone));
            Some((Outcome::Reply(reply), room))
        }
        Lookup::NoData => {
            reply.add_authority(soa(zone));
            Some((Outcome::Reply(reply), room))
        }
        Lookup::Answer(records) => {
            let last_alias = match records.last() {
                Some((_, Data::Cname(target))) if rtype != RecordType::CNAME => {
                    zone.lookup(target, Want::Any) == Lookup::Outside
                }
                _ => false,
            }
            .then(|| match records.last() {
                Some((_, Data::Cname(t))) => Name::from_ascii(t).ok(),
                _ => None,
            })
            .flatten();
            // SRV targets' addresses ride along, as CoreDNS gives them.
            for (_, data) in &records {
                if let Data::Srv { target, .. } = data {
                    for a in zone.addresses(target) {
                        if let Some(r) = record(target, &a, zone) {
                            reply.add_additional(r);
                        }
                    }
                }
            }
            reply.add_answers(records.iter().filter_map(|(o, d)| record(o, d, zone)));
            let outcome = match last_alias {
                Some(target) => Outcome::Chase {
                    reply,
                    target,
                    rtype,
                },
                None => Outcome::Reply(reply),
            };
            Some((outcome, room))
        }
    }
}

/// What the zone is asked for a record type.
fn want(rtype: RecordType) -> Want {
    match rtype {
        RecordType::A => Want::A,
        RecordType::AAAA => Want::Aaaa,
        RecordType::SRV => Want::Srv,
        RecordType::CNAME => Want::Cname,
        RecordType::TXT => Want::Txt,
        RecordType::PTR => Want::Ptr,
        RecordType::NS => Want::Ns,
        RecordType::SOA => Want::Soa,
        RecordType::ANY => Want::Any,
        _ => Want::Other,
    }
}

/// The zone's SOA record (negative answers carry it).
fn soa(zone: &Zone) -> Record {
    let apex = zone.domain().to_string();
    record(&apex, &Data::Soa(0), zone).expect("the zone's own name is valid")
}

/// `data` under `owner` as a record; None for a name that is no valid DNS name
/// (a service named as Kubernetes allows always is).
fn record(owner: &str, data: &Data, zone: &Zone) -> Option<Record> {
    let name = |n: &str| Name::from_ascii(n).ok();
    let rdata = match data {
        Data::A(a) => RData::A(A(*a)),
        Data::Aaaa(a) => RData::AAAA(AAAA(*a)),
        Data::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, name(target)?)),
        Data::Cname(t) => RData::CNAME(CNAME(name(t)?)),
        Data::Txt(t) => RData::TXT(TXT::new(vec![t.to_string()])),
        Data::Ptr(t) => RData::PTR(PTR(name(t)?)),
        Data::Ns(t) => RData::NS(NS(name(t)?)),
        Data::Soa(_) => RData::SOA(SOA::new(
            name(&format!("ns.dns.{}", zone.domain()))?,
            name(&format!("hostmaster.{}", zone.domain()))?,
            zone.serial(),
            7200,
            1800,
            86400,
            TTL,
        )),
    };
    Some(Record::from_rdata(name(owner)?, TTL, rdata))
}

/// A refusal of `query` (REFUSED: nowhere to forward names outside the zone).
pub fn refused(query: &Message) -> Message {
    let mut reply = Message::error_msg(
        query.metadata.id,
        query.metadata.op_code,
        ResponseCode::Refused,
    );
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.add_queries(query.queries.iter().cloned());
    reply
}

/// A server failure answer to `query` (the upstream did not answer).
pub fn server_failure(query: &Message) -> Message {
    let mut reply = refused(query);
    reply.metadata.response_code = ResponseCode::ServFail;
    reply.metadata.recursion_available = true;
    reply
}

/// `reply` on the wire within `limit` bytes: whole, or with its records left out
/// and the TC bit set (the client asks again over TCP).
pub fn encode(reply: &Message, limit: usize) -> Vec<u8> {
    match reply.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        Ok(_) => reply.truncate().to_vec().unwrap_or_default(),
        Err(_) => {
            let mut failed = Message::error_msg(
                reply.metadata.id,
                reply.metadata.op_code,
                ResponseCode::ServFail,
            );
            failed.add_queries(reply.queries.iter().cloned());
            failed.to_vec().unwrap_or_default()
        }
    }
}

/// How large a UDP answer to `query` may be: what its EDNS offers (at most
/// [`EDNS_PAYLOAD`]), 512 bytes without EDNS.
fn udp_limit(query: &Message) -> usize {
    match &query.edns {
        Some(e) => usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD)),
        None => PLAIN_PAYLOAD,
    }
}

/// A query for `name`'s `rtype` records, to ask an upstream.
pub fn query_for(name: Name, rtype: RecordType) -> Message {
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(hickory_proto::op::Query::query(name, rtype));
    q
}

#[cfg(test)]
mod tests;
