//! Resources rendered as Nova renders them.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use roost_common::model::{openstack_time, Flavor, Server, ServerGroup, TaskState, VmState};

use crate::store::HypervisorView;

fn links(base: &str, kind: &str, id: &str) -> Value {
    json!([
        {"rel": "self", "href": format!("{base}/compute/v2.1/{kind}/{id}")},
        {"rel": "bookmark", "href": format!("{base}/compute/{kind}/{id}")},
    ])
}

fn enum_text<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Nova's `hostId`: an opaque id of the host, per project.
fn host_id(project: &str, host: Option<&str>) -> String {
    match host {
        None => String::new(),
        Some(h) => {
            let digest = Sha256::digest(format!("{project}{h}").as_bytes());
            digest.iter().take(28).map(|b| format!("{b:02x}")).collect()
        }
    }
}

pub fn server_ref(base: &str, s: &Server) -> Value {
    json!({"id": s.id, "name": s.spec.name, "links": links(base, "servers", &s.id)})
}

pub fn server(base: &str, s: &Server) -> Value {
    let st = &crate::store::shown_status(s);
    let host = st.host.as_deref();
    let task: Option<TaskState> = st.task_state;
    let mut v = json!({
        "id": s.id,
        "name": s.spec.name,
        "status": st.nova_status(),
        "tenant_id": s.spec.project_id,
        "user_id": s.spec.user_id,
        "metadata": s.spec.metadata,
        "hostId": host_id(&s.spec.project_id, host),
        "image": {"id": s.spec.image_id, "links": links(base, "images", &s.spec.image_id)},
        "flavor": {"id": s.spec.flavor_id, "links": links(base, "flavors", &s.spec.flavor_id)},
        "created": openstack_time(&s.created_at),
        "updated": openstack_time(&s.updated_at),
        "addresses": {},
        "accessIPv4": "",
        "accessIPv6": "",
        "links": links(base, "servers", &s.id),
        "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": st.availability_zone.as_deref().or(s.spec.availability_zone.as_deref()).unwrap_or(""),
        "OS-EXT-SRV-ATTR:host": host,
        "OS-EXT-SRV-ATTR:hypervisor_hostname": host,
        "OS-EXT-SRV-ATTR:instance_name": format!("roost-{}", s.id),
        "OS-EXT-STS:vm_state": enum_text(&st.vm_state),
        "OS-EXT-STS:task_state": task.map(|t| enum_text(&t)),
        "OS-EXT-STS:power_state": st.power_state.code(),
        "OS-SRV-USG:launched_at": st.launched_at.map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()),
        "OS-SRV-USG:terminated_at": null,
        "config_drive": "",
        "key_name": null,
        "progress": if st.vm_state == VmState::Active { 100 } else { 0 },
        "security_groups": [{"name": "default"}],
        "os-extended-volumes:volumes_attached": s.spec.volumes.iter().map(|v| json!({"id": v})).collect::<Vec<_>>(),
    });
    if let Some(f) = &st.fault {
        v["fault"] =
            json!({"code": f.code, "message": f.message, "created": openstack_time(&f.at)});
    }
    v
}

pub fn flavor_ref(base: &str, f: &Flavor) -> Value {
    json!({"id": f.id, "name": f.spec.name, "links": links(base, "flavors", &f.id)})
}

pub fn flavor(base: &str, f: &Flavor) -> Value {
    let s = &f.spec;
    json!({
        "id": f.id,
        "name": s.name,
        "vcpus": s.vcpus,
        "ram": s.ram_mb,
        "disk": s.disk_gb,
        "OS-FLV-EXT-DATA:ephemeral": s.ephemeral_gb,
        "swap": if s.swap_mb == 0 { json!("") } else { json!(s.swap_mb) },
        "rxtx_factor": 1.0,
        "os-flavor-access:is_public": s.is_public,
        "OS-FLV-DISABLED:disabled": false,
        "links": links(base, "flavors", &f.id),
    })
}

pub fn server_group(g: &ServerGroup) -> Value {
    let policy = g.spec.policy.as_str();
    json!({
        "id": g.id,
        "name": g.spec.name,
        "policies": [policy],
        "policy": policy,
        "rules": {},
        "members": g.status.members,
        "metadata": {},
        "project_id": g.spec.project_id,
        "user_id": "",
    })
}

pub fn hypervisor(h: &HypervisorView) -> Value {
    let spec = &h.host.spec;
    let (cap, used) = (h.host.capacity, h.host.used);
    let mut ratios = BTreeMap::new();
    ratios.insert("cpu", spec.cpu_allocation_ratio);
    ratios.insert("ram", spec.ram_allocation_ratio);
    ratios.insert("disk", spec.disk_allocation_ratio);
    json!({
        "id": h.id,
        "hypervisor_hostname": spec.name,
        "hypervisor_type": "QEMU",
        "hypervisor_version": 0,
        "state": if h.host.down { "down" } else { "up" },
        "status": if spec.enabled { "enabled" } else { "disabled" },
        "host_ip": spec.address,
        "vcpus": spec.vcpus,
        "vcpus_used": used.vcpus,
        "memory_mb": spec.ram_mb,
        "memory_mb_used": used.ram_mb + spec.reserved_ram_mb,
        "free_ram_mb": cap.ram_mb.saturating_sub(used.ram_mb),
        "local_gb": spec.disk_gb,
        "local_gb_used": used.disk_gb,
        "free_disk_gb": cap.disk_gb.saturating_sub(used.disk_gb),
        "disk_available_least": cap.disk_gb.saturating_sub(used.disk_gb),
        "running_vms": h.running,
        "current_workload": 0,
        "cpu_info": "{}",
        "service": {"host": spec.name, "id": h.id, "disabled_reason": null},
        "roost:roles": spec.roles,
        "roost:availability_zone": spec.availability_zone,
        "roost:traits": spec.traits,
        "roost:allocation_ratios": ratios,
        "roost:capacity": {"vcpus": cap.vcpus, "memory_mb": cap.ram_mb, "local_gb": cap.disk_gb},
        "roost:used": {"vcpus": used.vcpus, "memory_mb": used.ram_mb, "local_gb": used.disk_gb},
    })
}
