//! Libvirt domain XML for a server, and reading Roost's marks back out of
//! a domain. Pure: no libvirt here, so every branch is unit-tested.
//!
//! Every domain Roost makes carries `<metadata>` in [`NAMESPACE`] with the
//! server's and the site's ids. The driver only ever touches domains whose
//! metadata names its own site: anything else on the host is left alone.

use std::fmt::Write as _;
use std::path::PathBuf;

pub use roost_common::config::CpuMode;

/// XML namespace of Roost's domain metadata.
pub const NAMESPACE: &str = "http://roost.dev/xmlns/domain/1";
/// Prefix of every domain name Roost makes (`roost-<server id>`).
pub const NAME_PREFIX: &str = "roost-";

/// How QEMU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's software emulation (TCG): slow, but works without KVM.
    Tcg,
    /// libvirt's test driver (`test:///default`): no process at all.
    Test,
}

impl Accel {
    fn domain_type(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "qemu",
            Accel::Test => "test",
        }
    }
}

/// Booting a kernel directly (Glance's kernel_id / ramdisk_id /
/// os_command_line) instead of from the root disk's boot loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
}

/// One network interface: a tap device on a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub bridge: String,
    pub tap: String,
    pub mac: String,
}

/// Everything the domain XML is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    pub server_id: String,
    pub site_id: String,
    /// The server's name, for `virsh list --title` readers.
    pub server_name: String,
    pub accel: Accel,
    /// The guest CPU under KVM (ignored otherwise).
    pub cpu_mode: CpuMode,
    pub vcpus: u32,
    /// Host CPUs the vCPUs may run on (flavor extra spec `roost:cpuset`).
    pub cpuset: Option<String>,
    pub memory_mib: u64,
    /// The qcow2 overlay the server boots from (vda).
    pub root_disk: PathBuf,
    /// Attached volumes: each one's disk (`vdb`, ...) and file.
    pub volumes: Vec<(String, PathBuf)>,
    pub nics: Vec<Nic>,
    /// The serial console is written to this file.
    pub console_log: PathBuf,
    pub direct_boot: Option<DirectBoot>,
}

/// The domain name Roost gives a server's domain.
pub fn domain_name(server_id: &str) -> String {
    format!("{NAME_PREFIX}{server_id}")
}

pub use roost_common::model::disk_target;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn unesc(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn path(p: &std::path::Path) -> String {
    esc(&p.to_string_lossy())
}

/// One qcow2 disk on the virtio bus (also what is hot-plugged for a
/// volume).
pub fn disk_xml(file: &std::path::Path, target: &str) -> String {
    format!(
        "    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2' discard='unmap'/>\n      <source file='{}'/>\n      <target dev='{}' bus='virtio'/>\n    </disk>",
        path(file),
        esc(target)
    )
}

/// The value of attribute `name` in the first element `<tag ...>` of `xml`.
fn attr(xml: &str, tag: &str, name: &str) -> Option<String> {
    let open = format!("<{tag} ");
    let rest = &xml[xml.find(&open)? + open.len()..];
    let rest = &rest[..rest.find('>')?];
    let at = rest.find(&format!("{name}="))? + name.len() + 1;
    let quote = rest[at..].chars().next()?;
    let value = &rest[at + 1..];
    Some(unesc(&value[..value.find(quote)?]))
}

/// The file disks of a domain's XML as (target, source file), in order.
pub fn disks(xml: &str) -> Vec<(String, std::path::PathBuf)> {
    xml.split("<disk ")
        .skip(1)
        .filter_map(|d| {
            let d = &d[..d.find("</disk>")?];
            let d = format!("<disk {d}");
            Some((
                attr(&d, "target", "dev")?,
                attr(&d, "source", "file")?.into(),
            ))
        })
        .collect()
}

/// The metadata element alone (what `virDomainGetMetadata` returns).
pub fn metadata_element(server_id: &str, site_id: &str) -> String {
    format!(
        "<roost:instance xmlns:roost=\"{NAMESPACE}\"><roost:server>{}</roost:server><roost:site>{}</roost:site></roost:instance>",
        esc(server_id),
        esc(site_id)
    )
}

/// Renders the domain XML.
pub fn render(d: &DomainSpec) -> String {
    let mut x = String::with_capacity(2048);
    let _ = writeln!(x, "<domain type='{}'>", d.accel.domain_type());
    let _ = writeln!(x, "  <name>{}</name>", esc(&domain_name(&d.server_id)));
    if uuid::Uuid::parse_str(&d.server_id).is_ok() {
        let _ = writeln!(x, "  <uuid>{}</uuid>", esc(&d.server_id));
    }
    let _ = writeln!(x, "  <title>{}</title>", esc(&d.server_name));
    let _ = writeln!(
        x,
        "  <metadata>\n    {}\n  </metadata>",
        metadata_element(&d.server_id, &d.site_id)
    );
    let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", d.memory_mib);
    match &d.cpuset {
        Some(set) => {
            let _ = writeln!(
                x,
                "  <vcpu placement='static' cpuset='{}'>{}</vcpu>",
                esc(set),
                d.vcpus
            );
        }
        None => {
            let _ = writeln!(x, "  <vcpu placement='static'>{}</vcpu>", d.vcpus);
        }
    }
    x.push_str("  <os>\n    <type arch='x86_64'>hvm</type>\n");
    match &d.direct_boot {
        Some(b) => {
            let _ = writeln!(x, "    <kernel>{}</kernel>", path(&b.kernel));
            if let Some(i) = &b.initrd {
                let _ = writeln!(x, "    <initrd>{}</initrd>", path(i));
            }
            if let Some(c) = &b.cmdline {
                let _ = writeln!(x, "    <cmdline>{}</cmdline>", esc(c));
            }
        }
        None => x.push_str("    <boot dev='hd'/>\n"),
    }
    x.push_str("  </os>\n  <features><acpi/><apic/></features>\n");
    if d.accel == Accel::Kvm {
        match d.cpu_mode {
            CpuMode::HostModel => x.push_str("  <cpu mode='host-model'/>\n"),
            CpuMode::HostPassthrough => x.push_str("  <cpu mode='host-passthrough'/>\n"),
            CpuMode::QemuDefault => {}
        }
    }
    x.push_str("  <clock offset='utc'/>\n  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n  <devices>\n");
    let _ = writeln!(x, "{}", disk_xml(&d.root_disk, &disk_target(0)));
    for (target, file) in &d.volumes {
        let _ = writeln!(x, "{}", disk_xml(file, target));
    }
    for nic in &d.nics {
        let _ = writeln!(
            x,
            "    <interface type='bridge'>\n      <source bridge='{}'/>\n      <target dev='{}'/>\n      <mac address='{}'/>\n      <model type='virtio'/>\n    </interface>",
            esc(&nic.bridge),
            esc(&nic.tap),
            esc(&nic.mac)
        );
    }
    let log = path(&d.console_log);
    let _ = writeln!(
        x,
        "    <serial type='file'>\n      <source path='{log}' append='off'/>\n      <target port='0'/>\n    </serial>\n    <console type='file'>\n      <source path='{log}' append='off'/>\n      <target type='serial' port='0'/>\n    </console>"
    );
    x.push_str("    <memballoon model='none'/>\n  </devices>\n</domain>\n");
    x
}

/// The text of the first element named `local` (with or without a
/// namespace prefix).
fn element_text(xml: &str, local: &str) -> Option<String> {
    let mut rest = xml;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>')?;
        let tag = &rest[..end];
        let name = tag.split_whitespace().next().unwrap_or("");
        let bare = name.rsplit(':').next().unwrap_or(name);
        if bare == local && !tag.starts_with('/') && !tag.ends_with('/') {
            let body = &rest[end + 1..];
            let close = body.find('<')?;
            return Some(unesc(body[..close].trim()));
        }
    }
    None
}

/// The (server id, site id) in Roost's metadata element, as libvirt hands
/// it back for [`NAMESPACE`] (libvirt drops the prefix), or in a whole
/// domain XML.
pub fn roost_ids(metadata: &str) -> Option<(String, String)> {
    element_text(metadata, "instance")?;
    let server = element_text(metadata, "server")?;
    let site = element_text(metadata, "site")?;
    (!server.is_empty() && !site.is_empty()).then_some((server, site))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DomainSpec {
        DomainSpec {
            server_id: "7c9e6679-7425-40de-944b-e07fc1f90ae7".into(),
            site_id: "edge-factory-01".into(),
            server_name: "plc <gateway> & co".into(),
            accel: Accel::Kvm,
            cpu_mode: CpuMode::HostPassthrough,
            vcpus: 2,
            cpuset: Some("2-3".into()),
            memory_mib: 256,
            root_disk: "/var/lib/roost/instances/x/disk".into(),
            volumes: vec![
                ("vdb".into(), "/v/a.qcow2".into()),
                ("vdc".into(), "/v/b.qcow2".into()),
            ],
            nics: vec![Nic {
                bridge: "rbr-net1".into(),
                tap: "rtap-1234".into(),
                mac: "fa:16:3e:00:00:01".into(),
            }],
            console_log: "/var/lib/roost/instances/x/console.log".into(),
            direct_boot: Some(DirectBoot {
                kernel: "/img/vmlinuz".into(),
                initrd: Some("/img/initrd".into()),
                cmdline: Some("console=ttyS0 quiet".into()),
            }),
        }
    }

    #[test]
    fn renders_flavor_disks_nics_console_and_marks() {
        let x = render(&spec());
        for want in [
            "<domain type='kvm'>",
            "<name>roost-7c9e6679-7425-40de-944b-e07fc1f90ae7</name>",
            "<uuid>7c9e6679-7425-40de-944b-e07fc1f90ae7</uuid>",
            "<title>plc &lt;gateway&gt; &amp; co</title>",
            "<memory unit='MiB'>256</memory>",
            "<vcpu placement='static' cpuset='2-3'>2</vcpu>",
            "<kernel>/img/vmlinuz</kernel>",
            "<initrd>/img/initrd</initrd>",
            "<cmdline>console=ttyS0 quiet</cmdline>",
            "<source file='/var/lib/roost/instances/x/disk'/>\n      <target dev='vda' bus='virtio'/>",
            "<source file='/v/a.qcow2'/>\n      <target dev='vdb' bus='virtio'/>",
            "<source file='/v/b.qcow2'/>\n      <target dev='vdc' bus='virtio'/>",
            "<source bridge='rbr-net1'/>",
            "<target dev='rtap-1234'/>",
            "<mac address='fa:16:3e:00:00:01'/>",
            "<serial type='file'>\n      <source path='/var/lib/roost/instances/x/console.log' append='off'/>",
            "<cpu mode='host-passthrough'/>",
        ] {
            assert!(x.contains(want), "missing {want:?} in\n{x}");
        }
        assert_eq!(
            roost_ids(&x),
            Some((
                "7c9e6679-7425-40de-944b-e07fc1f90ae7".into(),
                "edge-factory-01".into()
            ))
        );
    }

    #[test]
    fn tcg_without_pinning_or_kernel_boots_from_disk() {
        let mut d = spec();
        d.accel = Accel::Tcg;
        d.cpuset = None;
        d.direct_boot = None;
        d.server_id = "not-a-uuid".into();
        let x = render(&d);
        assert!(x.starts_with("<domain type='qemu'>"), "{x}");
        assert!(x.contains("<vcpu placement='static'>2</vcpu>"));
        assert!(x.contains("<boot dev='hd'/>"));
        assert!(
            !x.contains("<uuid>"),
            "only a UUID server id becomes the domain's uuid"
        );
        assert!(!x.contains("host-passthrough"));
    }

    #[test]
    fn disks_read_back_as_libvirt_writes_them() {
        let xml = render(&spec());
        assert_eq!(
            disks(&xml),
            vec![
                ("vda".to_string(), "/var/lib/roost/instances/x/disk".into()),
                ("vdb".to_string(), "/v/a.qcow2".into()),
                ("vdc".to_string(), "/v/b.qcow2".into()),
            ]
        );
        // libvirt's own output: attributes in another order, a backing
        // store, double quotes, escapes.
        let live = r#"<disk type="file" device="disk"><driver name="qemu" type="qcow2"/><source file="/v/a&amp;b.qcow2" index="2"/><backingStore/><target dev="vdb" bus="virtio"/><alias name="virtio-disk1"/></disk><disk type='file' device='cdrom'><target dev='hdc'/></disk>"#;
        assert_eq!(
            disks(live),
            vec![("vdb".to_string(), "/v/a&b.qcow2".into())]
        );
    }

    #[test]
    fn disk_targets_go_past_z() {
        assert_eq!(disk_target(0), "vda");
        assert_eq!(disk_target(25), "vdz");
        assert_eq!(disk_target(26), "vdaa");
        assert_eq!(disk_target(27), "vdab");
    }

    #[test]
    fn metadata_of_others_is_not_ours() {
        assert_eq!(
            roost_ids("<other><server>x</server><site>y</site></other>"),
            None
        );
        assert_eq!(roost_ids(""), None);
        // As libvirt hands the element back: without the prefix.
        let back = "<instance>\n  <server>a&amp;b</server>\n  <site>s1</site>\n</instance>";
        assert_eq!(roost_ids(back), Some(("a&b".into(), "s1".into())));
        let empty = format!("<r:instance xmlns:r=\"{NAMESPACE}\"><r:server></r:server><r:site>s</r:site></r:instance>");
        assert_eq!(roost_ids(&empty), None);
    }
}
