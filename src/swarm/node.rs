//! Who a node is: its origin URL ([`NodeUrl`], `http://10.0.3.7:5000`), and the set of nodes
//! the fleet knows ([`Fleet`]), the only addresses a tracker may hand out or a node may fetch
//! from.
//!
//! A node's identity is its origin, the way `cluster` names a replica: scheme, host and the port
//! unless it is the scheme's default, nothing else. Two spellings of one origin are one node; a
//! URL with user info, a path, a query or a fragment is no node at all (a tracker answer cannot
//! smuggle a path or credentials into a node's request).
//!
//! Rule of dependency: a leaf (url only).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use url::Url;

/// The longest node URL accepted (a DNS name is at most 253 bytes; the scheme and port add 15).
pub const MAX_NODE_URL: usize = 300;

/// A node's origin: `http[s]://host[:port]`, normalized.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeUrl(String);

impl NodeUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NodeUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<NodeUrl, String> {
        if s.len() > MAX_NODE_URL {
            return Err(format!("a node URL of {} bytes is too long", s.len()));
        }
        let u = Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        NodeUrl::from_url(&u)
    }
}

impl NodeUrl {
    /// The node a URL names, if it is an origin.
    pub fn from_url(u: &Url) -> Result<NodeUrl, String> {
        if !matches!(u.scheme(), "http" | "https") {
            return Err(format!("{u}: a node is reached over http or https"));
        }
        if u.host().is_none() {
            return Err(format!("{u}: no host"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(format!("{u}: no user info in a node URL"));
        }
        if u.path() != "/" || u.query().is_some() || u.fragment().is_some() {
            return Err(format!("{u}: a node URL is an origin (no path or query)"));
        }
        Ok(NodeUrl(u.origin().ascii_serialization()))
    }
}

/// The nodes of the fleet, as this berth knows them (`[fleet] peers`, or `peers_dns` resolved).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fleet(BTreeSet<NodeUrl>);

impl Fleet {
    pub fn new(nodes: impl IntoIterator<Item = NodeUrl>) -> Fleet {
        Fleet(nodes.into_iter().collect())
    }

    pub fn contains(&self, node: &NodeUrl) -> bool {
        self.0.contains(node)
    }

    /// Adds a node (the parent learns its nodes from their signed calls); true if it was new.
    pub fn insert(&mut self, node: NodeUrl) -> bool {
        self.0.insert(node)
    }

    /// Forgets a node; true if it was there.
    pub fn remove(&mut self, node: &NodeUrl) -> bool {
        self.0.remove(node)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &NodeUrl> {
        self.0.iter()
    }

    /// The node a string names, if it is one of the fleet's.
    pub fn member(&self, s: &str) -> Result<NodeUrl, String> {
        let node: NodeUrl = s.parse()?;
        if self.contains(&node) {
            Ok(node)
        } else {
            Err(format!("{node} is not a node of the fleet"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalized() {
        let a: NodeUrl = "http://10.0.3.7:5000".parse().unwrap();
        let b: NodeUrl = "HTTP://10.0.3.7:5000/".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "http://10.0.3.7:5000");
        // The default port is left out, a name is lowercased.
        let c: NodeUrl = "https://Node-1.Berth:443".parse().unwrap();
        assert_eq!(c.as_str(), "https://node-1.berth");
        let v6: NodeUrl = "http://[fd00::7]:5000".parse().unwrap();
        assert_eq!(v6.as_str(), "http://[fd00::7]:5000");
    }

    #[test]
    fn anything_but_an_origin_is_refused() {
        for bad in [
            "",
            "10.0.3.7:5000",
            "ftp://10.0.3.7",
            "file:///etc/passwd",
            "http://user:pw@10.0.3.7:5000",
            "http://user@10.0.3.7:5000",
            "http://10.0.3.7:5000/v2/",
            "http://10.0.3.7:5000/?x=1",
            "http://10.0.3.7:5000/#f",
            "http://",
            "unix:/run/berth.sock",
        ] {
            assert!(bad.parse::<NodeUrl>().is_err(), "{bad:?}");
        }
        let long = format!("http://{}.example", "a".repeat(MAX_NODE_URL));
        assert!(long.parse::<NodeUrl>().unwrap_err().contains("too long"));
    }

    #[test]
    fn membership() {
        let fleet = Fleet::new(
            ["http://10.0.0.1:5000", "http://10.0.0.2:5000"].map(|s| s.parse().unwrap()),
        );
        assert_eq!(fleet.len(), 2);
        assert!(!fleet.is_empty());
        assert_eq!(
            fleet.member("http://10.0.0.1:5000/").unwrap().as_str(),
            "http://10.0.0.1:5000"
        );
        assert!(
            fleet
                .member("http://10.0.0.3:5000")
                .unwrap_err()
                .contains("not a node")
        );
        assert!(fleet.member("http://10.0.0.1:5000/x").is_err());
        assert!(Fleet::default().is_empty());
        assert_eq!(fleet.iter().count(), 2);
        let mut grown = fleet.clone();
        let third: NodeUrl = "http://10.0.0.3:5000".parse().unwrap();
        assert!(grown.insert(third.clone()));
        assert!(!grown.insert(third.clone()), "once");
        assert_eq!(grown.member("http://10.0.0.3:5000").unwrap(), third);
        assert!(grown.remove(&third));
        assert!(!grown.remove(&third));
        assert_eq!(grown, fleet);
    }
}
