//! Where names outside the zone go: the `--dns-upstream` flag, by default the
//! node's own resolvers (its /etc/resolv.conf, as CoreDNS's `forward . /etc/resolv.conf`).

use std::net::{IpAddr, SocketAddr};

/// The upstream resolvers `flag` names: `auto` for the nameservers of
/// `resolv_conf` (its text), `none` for none, else addresses (`IP` or
/// `IP:PORT`, comma-separated). `own`: addresses that would loop back to the
/// agent itself (the cluster DNS address, the listener's), left out.
pub fn upstreams(flag: &str, resolv_conf: &str, own: &[IpAddr]) -> Result<Vec<SocketAddr>, String> {
    let found: Vec<SocketAddr> = match flag.trim() {
        "auto" => resolv_conf
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some("nameserver")).then_some(())?;
                words.next()?.parse::<IpAddr>().ok()
            })
            .map(|ip| SocketAddr::new(ip, 53))
            .collect(),
        "none" | "" => Vec::new(),
        list => list
            .split(',')
            .map(|s| {
                let s = s.trim();
                s.parse::<SocketAddr>()
                    .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        format!(
                            "--dns-upstream: {s:?} is no address (want IP or IP:PORT, auto or none)"
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(found
        .into_iter()
        .filter(|a| !(a.port() == 53 && own.contains(&a.ip())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_are_the_default_and_the_agent_is_never_its_own_upstream() {
        let conf = "# generated\nsearch example.org\nnameserver 127.0.0.53\nnameserver  10.96.0.10\nnameserver fd00::1\noptions edns0\n";
        let own = ["10.96.0.10".parse().unwrap()];
        assert_eq!(
            upstreams("auto", conf, &own).unwrap(),
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "[fd00::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(upstreams("none", conf, &own).unwrap(), vec![]);
        assert_eq!(
            upstreams("192.0.2.1, 127.0.0.1:5353", conf, &own).unwrap(),
            vec![
                "192.0.2.1:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap()
            ]
        );
        let e = upstreams("dns.example", conf, &own).unwrap_err();
        assert!(
            e.contains("--dns-upstream") && e.contains("dns.example"),
            "{e}"
        );
    }
}
