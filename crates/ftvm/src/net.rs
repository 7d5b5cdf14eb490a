//! `--net tap=NAME[,mac=MAC]`: network devices.

use std::sync::Arc;

use ftvm_devices::output::{DirectOutput, NET_STREAM_BASE};
use ftvm_devices::StreamId;
use ftvm_virtio::net::{MacAddr, NetSpec, Tap};

use crate::error::CliError;

/// Most network devices a VM may have.
pub const MAX_NET: usize = 4;

/// One parsed `--net`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetArg {
    /// TAP name.
    pub tap: String,
    /// MAC, if given.
    pub mac: Option<MacAddr>,
}

/// Parse one `--net` value.
pub fn parse_net(spec: &str) -> Result<NetArg, CliError> {
    let usage =
        |why: String| CliError::Usage(format!("--net {spec}: {why} (syntax: tap=NAME[,mac=MAC])"));
    let mut tap = None;
    let mut mac = None;
    for part in spec.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            return Err(usage(format!("'{part}' is not key=value")));
        };
        match k {
            "tap" if tap.is_none() => tap = Some(v.to_string()),
            "mac" if mac.is_none() => mac = Some(v.parse::<MacAddr>().map_err(usage)?),
            "tap" | "mac" => return Err(usage(format!("'{k}' given twice"))),
            other => return Err(usage(format!("unknown key '{other}'"))),
        }
    }
    let tap = tap.ok_or_else(|| usage("tap=NAME is required".into()))?;
    if tap.is_empty() {
        return Err(usage("empty TAP name".into()));
    }
    Ok(NetArg { tap, mac })
}

/// Parse every `--net`, open the TAPs, and have `direct` release each device's frames to
/// its TAP. Device `i` sends on stream `NET_STREAM_BASE + i`.
pub fn open_net(specs: &[String], direct: &DirectOutput) -> Result<Vec<NetSpec>, CliError> {
    if specs.len() > MAX_NET {
        return Err(CliError::Usage(format!(
            "{} --net devices given; at most {MAX_NET}",
            specs.len()
        )));
    }
    let args = specs
        .iter()
        .map(|s| parse_net(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if args[..i].iter().any(|b| b.tap == a.tap) {
            return Err(CliError::Usage(format!("--net: TAP {} given twice", a.tap)));
        }
        let tap = Arc::new(Tap::open(&a.tap).map_err(|e| CliError::Usage(format!("--net: {e}")))?);
        direct.attach_frames(NET_STREAM_BASE + i as StreamId, tap.clone());
        out.push(NetSpec {
            mac: a.mac.unwrap_or_else(|| MacAddr::default_for(&a.tap, i)),
            tap,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            parse_net("tap=t0").unwrap(),
            NetArg {
                tap: "t0".into(),
                mac: None
            }
        );
        let a = parse_net("tap=t0,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(a.mac.unwrap().to_string(), "02:00:00:00:00:01");
        for bad in [
            "",
            "t0",
            "tap=",
            "mac=02:00:00:00:00:01",
            "tap=a,tap=b",
            "tap=a,mtu=9000",
            "tap=a,mac=zz",
        ] {
            let e = parse_net(bad).unwrap_err().to_string();
            assert!(e.contains("--net"), "{bad}: {e}");
        }
    }
}
