//! Queues: HTB trees per uplink built through rtnetlink, rates that follow the active uplink.
//!
//! - Upload: each uplink with an `egress_rate` gets the tree of [`tree::HtbTree`] as
//!   its root qdisc; wan_egress puts the class in skb->priority right before it.
//! - Download: each LAN interface gets the same tree at the active uplinks'
//!   `ingress_rate` (the LAN side is where the flow entry knows the class;
//!   lan_egress sets skb->priority there). [`Qos::set_download_rate`] changes
//!   the classes in place on failover.
//! - Leaf qdiscs: fq_codel, else cake, else a bfifo sized from the rate; probed
//!   once, on the first leaf created, and reported.
//!
//! Ownership: our root qdisc is the HTB with handle `1a1:`. It only ever replaces
//! a kernel default root (handle 0: noqueue, pfifo_fast, mq, or whatever
//! `net.core.default_qdisc` made); any other root qdisc is someone else's and the
//! interface is refused with [`QosError::ForeignRoot`]. Removing our root gives
//! the device its kernel default back, which is exactly what was there before.
//! An HTB `1a1:` found at start is adopted (a previous run that did not stop
//! cleanly) and brought to the configured state.
//!
//! The trees are left in place if the process dies without [`Qos::remove`]:
//! shaping keeps working (fail open means forwarding continues, and it does), and
//! the next start adopts them.
//!
//! All calls are synchronous: each runs its netlink work on a short-lived thread
//! with its own current-thread runtime (a few milliseconds), in the network
//! namespace of the calling thread. From async code, call them through
//! `tokio::task::spawn_blocking` or accept the short block.

pub mod netlink;
pub mod tree;

use std::ffi::CString;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Mode};
use crate::config::Rate;
use netlink::{handle, Conn, NlError};
use tree::{HtbTree, Plan, DEFAULT_MINOR, ROOT_MAJOR};

#[derive(Debug, thiserror::Error)]
pub enum QosError {
    #[error("interface {iface} does not exist")]
    NoInterface { iface: String },
    #[error(
        "{iface} has a root qdisc inferlane did not create ({kind} {handle}); inferlane \
         never replaces it: remove it (tc qdisc del dev {iface} root) or drop the rate \
         from the config"
    )]
    ForeignRoot { iface: String, kind: String, handle: String },
    #[error("{op} on {iface}: {source}")]
    Netlink { op: &'static str, iface: String, source: NlError },
    #[error("no leaf qdisc is available on {iface} (tried {tried})")]
    NoLeafQdisc { iface: String, tried: String },
    #[error("netlink worker: {0}")]
    Worker(String),
}

/// An interface by name and index (the index as seen in the caller's namespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub name: String,
    pub ifindex: u32,
}

impl Link {
    /// Looks the index up in the calling thread's network namespace.
    pub fn by_name(name: &str) -> Result<Link, QosError> {
        let missing = || QosError::NoInterface { iface: name.to_owned() };
        let c_name = CString::new(name).map_err(|_| missing())?;
        // SAFETY: a valid NUL-terminated string; if_nametoindex only reads it.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if ifindex == 0 {
            return Err(missing());
        }
        Ok(Link { name: name.to_owned(), ifindex })
    }
}

/// The interfaces the queues go on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    pub lan: Vec<Link>,
    /// Uplink interfaces (by interface name, as `uplinks.interface` says).
    pub uplinks: Vec<Link>,
}

impl Links {
    /// Every LAN interface and every uplink interface of the config, by name.
    pub fn resolve(config: &Config) -> Result<Links, QosError> {
        Ok(Links {
            lan: config.lan.interfaces.iter().map(|n| Link::by_name(n)).collect::<Result<_, _>>()?,
            uplinks: config.uplinks.iter().map(|u| Link::by_name(&u.interface)).collect::<Result<_, _>>()?,
        })
    }

    fn uplink(&self, iface: &str) -> Result<&Link, QosError> {
        self.uplinks
            .iter()
            .find(|l| l.name == iface)
            .ok_or_else(|| QosError::NoInterface { iface: iface.to_owned() })
    }
}

/// The qdisc under each HTB leaf class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeafKind {
    FqCodel,
    Cake,
    Bfifo,
}

impl LeafKind {
    /// Preference order: flow queueing with AQM first; the bfifo only bounds delay.
    pub const PREFERENCE: [LeafKind; 3] = [LeafKind::FqCodel, LeafKind::Cake, LeafKind::Bfifo];

    /// The kind a qdisc dump names, if it is one of ours.
    pub fn from_kind(kind: &str) -> Option<LeafKind> {
        Self::PREFERENCE.into_iter().find(|k| k.kind() == kind)
    }

    /// For status: the kinds preferred to this one (not probed when the leaf was
    /// kept from an adopted tree; a previous start found them missing).
    fn worse_than_best(self) -> Vec<String> {
        Self::PREFERENCE
            .into_iter()
            .take_while(|k| *k != self)
            .map(|k| format!("{}: not probed, kept the adopted leaf", k.kind()))
            .collect()
    }

    pub fn kind(self) -> &'static str {
        match self {
            LeafKind::FqCodel => "fq_codel",
            LeafKind::Cake => "cake",
            LeafKind::Bfifo => "bfifo",
        }
    }
}

/// Which way a tree shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "direction")]
pub enum Role {
    /// Upload, on an uplink interface.
    Egress { uplink: String },
    /// Download, on a LAN interface.
    Download,
}

#[derive(Debug, Clone)]
struct Shaped {
    role: Role,
    link: Link,
    tree: HtbTree,
    /// The root qdisc kind our HTB replaced ("adopted" when it was ours already).
    replaced: String,
}

/// The queues inferlane owns. Create with [`Qos::apply`], end with [`Qos::remove`].
#[derive(Debug)]
pub struct Qos {
    leaf: Option<LeafKind>,
    /// Why the preferred leaf kinds were not used, e.g. "fq_codel: ENOENT".
    leaf_fallback: Vec<String>,
    shaped: Vec<Shaped>,
    lan: Vec<Link>,
    download: Option<Rate>,
    /// Observe mode: no qdiscs at all.
    observe: bool,
}

impl Qos {
    /// Builds every tree the config asks for. On error nothing of this call is left
    /// behind (trees it created are removed again).
    pub fn apply(config: &Config, links: &Links) -> Result<Qos, QosError> {
        let mut qos = Qos { leaf: None, leaf_fallback: Vec::new(), shaped: Vec::new(), lan: links.lan.clone(), download: None, observe: config.daemon.mode == Mode::Observe };
        if qos.observe {
            tracing::info!("queues: observe mode, no qdiscs");
            return Ok(qos);
        }
        let plan = Plan::from_config(config);
        let targets = targets(&plan, links, plan.download)?;
        qos.download = plan.download;
        let result = run(|mut conn| {
            let qos = &mut qos;
            async move {
                for (role, link, tree) in targets {
                    if let Err(e) = qos.install(&mut conn, role, link, tree).await {
                        for errors in qos.uninstall_all(&mut conn).await {
                            tracing::warn!("queues: undoing a failed apply: {errors}");
                        }
                        return Err(e);
                    }
                }
                Ok(())
            }
        })?;
        result.map(|()| qos)
    }

    /// Brings the trees to a new config (reload): classes and leaves are changed in
    /// place, trees no longer wanted are removed, new ones built. The download rate
    /// set by [`Qos::set_download_rate`] is kept.
    pub fn update(&mut self, config: &Config, links: &Links) -> Result<(), QosError> {
        self.lan = links.lan.clone();
        self.observe = config.daemon.mode == Mode::Observe;
        let plan = Plan::from_config(config);
        let wanted = if self.observe {
            Vec::new()
        } else {
            targets(&plan, links, self.download)?
        };
        run(|mut conn| async move { self.converge(&mut conn, wanted, |_| true).await })?
    }

    /// The active uplink changed: the LAN trees follow its `ingress_rate` (`None`:
    /// unknown capacity, the download is not shaped). Rates change in place; the
    /// kernel applies them to the next packet dequeued.
    pub fn set_download_rate(&mut self, rate: Option<Rate>) -> Result<(), QosError> {
        if rate == self.download {
            return Ok(());
        }
        self.download = rate;
        let wanted: Vec<_> = match rate {
            Some(rate) if !self.observe => self
                .lan
                .iter()
                .map(|l| (Role::Download, l.clone(), HtbTree::new(rate)))
                .collect(),
            _ => Vec::new(),
        };
        run(|mut conn| async move { self.converge(&mut conn, wanted, |s| s.role == Role::Download).await })?
    }

    /// Removes every root qdisc we own, continuing past failures and reporting all.
    pub fn remove(mut self) -> Result<(), Vec<QosError>> {
        let errors = match run(|mut conn| {
            let qos = &mut self;
            async move { qos.uninstall_all(&mut conn).await }
        }) {
            Ok(errors) => errors,
            Err(e) => vec![e],
        };
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// What is in place, for status output.
    pub fn describe(&self) -> QosStatus {
        QosStatus {
            leaf_qdisc: self.leaf.map(|k| k.kind().to_owned()),
            leaf_fallback: self.leaf_fallback.clone(),
            download_rate: self.download.map(|r| r.to_string()),
            interfaces: self
                .shaped
                .iter()
                .map(|s| InterfaceStatus {
                    interface: s.link.name.clone(),
                    role: s.role.clone(),
                    rate: s.tree.link.to_string(),
                    replaced: s.replaced.clone(),
                    classes: s
                        .tree
                        .leaves
                        .iter()
                        .map(|l| ClassStatus {
                            lane: l.lane.name().to_owned(),
                            classid: format!("{:x}:{:x}", ROOT_MAJOR, l.class.minor),
                            rate_bits: l.class.rate * 8,
                            ceil_bits: l.class.ceil * 8,
                            prio: l.class.prio,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The leaf qdisc kind chosen (None until a first tree was built).
    pub fn leaf_kind(&self) -> Option<LeafKind> {
        self.leaf
    }

    /// Makes the trees in `scope` exactly `wanted`: changes the ones that exist,
    /// builds the missing, removes the rest. Continues past a failing interface and
    /// returns the first error.
    async fn converge(
        &mut self,
        conn: &mut Conn,
        wanted: Vec<(Role, Link, HtbTree)>,
        scope: impl Fn(&Shaped) -> bool,
    ) -> Result<(), QosError> {
        let mut first_error = None;
        let mut keep = Vec::new();
        for shaped in std::mem::take(&mut self.shaped) {
            let still = wanted.iter().any(|(role, link, _)| *role == shaped.role && link.ifindex == shaped.link.ifindex);
            if !scope(&shaped) || still {
                keep.push(shaped);
            } else if let Err(e) = uninstall(conn, &shaped.link).await {
                first_error.get_or_insert(e);
                // Still ours: keep it so remove() tries again.
                keep.push(shaped);
            }
        }
        self.shaped = keep;
        for (role, link, tree) in wanted {
            let current = self.shaped.iter().position(|s| s.role == role && s.link.ifindex == link.ifindex);
            if let Some(i) = current {
                if self.shaped[i].tree == tree {
                    continue;
                }
                let result = self.put_tree(conn, &link, &tree).await;
                match result {
                    Ok(()) => self.shaped[i].tree = tree,
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            } else if let Err(e) = self.install(conn, role, link, tree).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Puts our root on `link` (or adopts it) and builds the tree.
    async fn install(&mut self, conn: &mut Conn, role: Role, link: Link, tree: HtbTree) -> Result<(), QosError> {
        let nl = |op, source| QosError::Netlink { op, iface: link.name.clone(), source };
        let ours = handle(ROOT_MAJOR, 0);
        let root = conn.root_qdisc(link.ifindex).await.map_err(|e| nl("list qdiscs", e))?;
        let replaced = match root {
            Some(q) if q.kind == "htb" && q.handle == ours && q.htb_default == Some(u32::from(DEFAULT_MINOR)) => {
                tracing::info!(iface = %link.name, "queues: adopting our HTB root left by a previous run");
                "adopted".to_owned()
            }
            Some(q) if q.handle == ours && q.kind == "htb" => {
                // Ours, but with another default class (HTB cannot change it in place).
                conn.del_htb_root(link.ifindex).await.map_err(|e| nl("delete stale root qdisc", e))?;
                self.add_root(conn, &link).await?;
                "adopted".to_owned()
            }
            Some(q) if q.handle >> 16 != 0 => {
                return Err(QosError::ForeignRoot {
                    iface: link.name.clone(),
                    kind: q.kind,
                    handle: format!("{:x}:", q.handle >> 16),
                })
            }
            default => {
                self.add_root(conn, &link).await?;
                default.map_or_else(|| "none".to_owned(), |q| q.kind)
            }
        };
        // Recorded before the classes, so a failure below still removes the root.
        self.shaped.push(Shaped { role, link: link.clone(), tree: tree.clone(), replaced });
        self.put_tree(conn, &link, &tree).await
    }

    async fn add_root(&self, conn: &mut Conn, link: &Link) -> Result<(), QosError> {
        match conn.add_htb_root(link.ifindex, DEFAULT_MINOR).await {
            Ok(()) => Ok(()),
            // A root appeared between our look and our add: someone else's.
            Err(e) if e.is(libc::EEXIST) => Err(QosError::ForeignRoot {
                iface: link.name.clone(),
                kind: "unknown".into(),
                handle: "unknown".into(),
            }),
            Err(e) => Err(QosError::Netlink { op: "add root qdisc", iface: link.name.clone(), source: e }),
        }
    }

    /// Creates or changes every class, then every leaf qdisc.
    async fn put_tree(&mut self, conn: &mut Conn, link: &Link, tree: &HtbTree) -> Result<(), QosError> {
        let nl = |op, source| QosError::Netlink { op, iface: link.name.clone(), source };
        for class in tree.classes() {
            conn.put_class(link.ifindex, class).await.map_err(|e| nl("put class", e))?;
        }
        // Leaves already there (an adopted tree): the kernel changes a leaf in place
        // only when the kind is the same, so a leaf of another kind goes first.
        let existing = conn.qdiscs(link.ifindex).await.map_err(|e| nl("list qdiscs", e))?;
        for leaf in &tree.leaves {
            let (minor, major, limit) = (leaf.class.minor, leaf.lane.leaf_major(), leaf.fifo_limit);
            let mut present = existing
                .iter()
                .find(|q| q.handle == handle(major, 0) && q.parent == handle(ROOT_MAJOR, minor))
                .map(|q| q.kind.clone());
            let kind = match (self.leaf, present.as_deref().and_then(LeafKind::from_kind)) {
                (Some(kind), _) => kind,
                // A leaf of ours already there (a tree adopted after a restart or a
                // crash) is kept as it is: probing a better kind would delete it
                // first (the kernel changes a qdisc in place only within its kind),
                // dropping what it holds while traffic flows.
                (None, Some(kind)) => {
                    tracing::info!("queues: leaf qdisc {} (kept from the adopted tree)", kind.kind());
                    self.leaf = Some(kind);
                    self.leaf_fallback = kind.worse_than_best();
                    kind
                }
                (None, None) => {
                    self.probe_leaf(conn, link, minor, major, limit, present).await?;
                    continue;
                }
            };
            if present.take().is_some_and(|k| k != kind.kind()) {
                conn.del_leaf(link.ifindex, minor, major).await.map_err(|e| nl("delete leaf qdisc", e))?;
            }
            conn.put_leaf(link.ifindex, minor, major, kind.kind(), limit)
                .await
                .map_err(|e| nl("put leaf qdisc", e))?;
        }
        Ok(())
    }

    /// The first leaf: tries each kind in preference order; the kernel answers
    /// ENOENT for a qdisc kind it does not have (EOPNOTSUPP when built without).
    /// `present`: the kind of a leaf of ours already there (adopted tree).
    async fn probe_leaf(
        &mut self,
        conn: &mut Conn,
        link: &Link,
        minor: u16,
        major: u16,
        limit: u32,
        mut present: Option<String>,
    ) -> Result<(), QosError> {
        let nl = |op, source| QosError::Netlink { op, iface: link.name.clone(), source };
        let mut tried = Vec::new();
        for kind in LeafKind::PREFERENCE {
            if present.as_deref().is_some_and(|k| k != kind.kind()) {
                conn.del_leaf(link.ifindex, minor, major).await.map_err(|e| nl("delete leaf qdisc", e))?;
                present = None;
            }
            match conn.put_leaf(link.ifindex, minor, major, kind.kind(), limit).await {
                Ok(()) => {
                    if tried.is_empty() {
                        tracing::info!("queues: leaf qdisc {}", kind.kind());
                    } else {
                        tracing::warn!(
                            "queues: leaf qdisc {} (fallback; not available: {})",
                            kind.kind(),
                            tried.join(", ")
                        );
                    }
                    self.leaf = Some(kind);
                    self.leaf_fallback = tried;
                    return Ok(());
                }
                Err(e) if e.is(libc::ENOENT) || e.is(libc::EOPNOTSUPP) => {
                    tried.push(format!("{}: {}", kind.kind(), std::io::Error::from_raw_os_error(e.errno.unwrap_or(0))));
                }
                Err(e) => return Err(nl("put leaf qdisc", e)),
            }
        }
        Err(QosError::NoLeafQdisc { iface: link.name.clone(), tried: tried.join(", ") })
    }

    async fn uninstall_all(&mut self, conn: &mut Conn) -> Vec<QosError> {
        let mut errors = Vec::new();
        let mut left = Vec::new();
        for shaped in std::mem::take(&mut self.shaped) {
            if let Err(e) = uninstall(conn, &shaped.link).await {
                errors.push(e);
                left.push(shaped);
            }
        }
        self.shaped = left;
        errors
    }
}

/// Deletes our root from `link`. Gone already (ENOENT: no `1a1:` root; ENODEV:
/// the interface itself) is success; EINVAL means `1a1:` is not HTB, so not ours.
async fn uninstall(conn: &mut Conn, link: &Link) -> Result<(), QosError> {
    match conn.del_htb_root(link.ifindex).await {
        Ok(()) => Ok(()),
        Err(e) if e.is(libc::ENOENT) || e.is(libc::ENODEV) || e.is(libc::EINVAL) => Ok(()),
        Err(e) => Err(QosError::Netlink { op: "delete root qdisc", iface: link.name.clone(), source: e }),
    }
}

/// The (role, link, tree) list a plan asks for, LAN trees at `download`.
fn targets(plan: &Plan, links: &Links, download: Option<Rate>) -> Result<Vec<(Role, Link, HtbTree)>, QosError> {
    let mut out = Vec::new();
    for (uplink, iface, tree) in &plan.egress {
        out.push((Role::Egress { uplink: uplink.clone() }, links.uplink(iface)?.clone(), tree.clone()));
    }
    if let Some(rate) = download {
        for link in &links.lan {
            out.push((Role::Download, link.clone(), HtbTree::new(rate)));
        }
    }
    Ok(out)
}

/// Runs `f` with a fresh netlink connection on a private thread and runtime. The
/// thread inherits the calling thread's network namespace; a runtime may neither
/// block nor be dropped inside another, which is why it gets its own thread.
fn run<T, F, Fut>(f: F) -> Result<T, QosError>
where
    F: FnOnce(Conn) -> Fut + Send,
    Fut: std::future::Future<Output = T>,
    T: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| QosError::Worker(e.to_string()))?;
            runtime.block_on(async {
                let conn = Conn::open().map_err(|e| QosError::Worker(e.to_string()))?;
                Ok(f(conn).await)
            })
        })
        .join()
        .unwrap_or_else(|_| Err(QosError::Worker("panicked".into())))
    })
}

/// `inferlane status` material.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QosStatus {
    /// "fq_codel", "cake" or "bfifo"; None when no tree was built.
    pub leaf_qdisc: Option<String>,
    /// Kinds tried before the one chosen, and why they failed.
    pub leaf_fallback: Vec<String>,
    pub download_rate: Option<String>,
    pub interfaces: Vec<InterfaceStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub interface: String,
    pub role: Role,
    pub rate: String,
    /// The root qdisc kind our tree replaced.
    pub replaced: String,
    pub classes: Vec<ClassStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassStatus {
    pub lane: String,
    pub classid: String,
    pub rate_bits: u64,
    pub ceil_bits: u64,
    pub prio: u32,
}

impl fmt::Display for QosStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.interfaces.is_empty() {
            return writeln!(f, "queues: none");
        }
        write!(f, "queues: leaf {}", self.leaf_qdisc.as_deref().unwrap_or("-"))?;
        if !self.leaf_fallback.is_empty() {
            write!(f, " (fallback; {})", self.leaf_fallback.join(", "))?;
        }
        writeln!(f)?;
        for i in &self.interfaces {
            let dir = match &i.role {
                Role::Egress { uplink } => format!("upload via {uplink}"),
                Role::Download => "download".to_owned(),
            };
            write!(f, "  {} ({dir}) {}:", i.interface, i.rate)?;
            for c in &i.classes {
                let rate = Rate::from_bits_per_sec(c.rate_bits).map_or_else(|| "0".into(), |r| r.to_string());
                write!(f, " {} {rate}", c.lane)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
