"""Nova's filter scheduler, in process, on the same 1,000 synthetic hosts as
Roost's host-choice benchmark: Nova's default enabled filters, then every
weigher Nova ships, timed per decision. Placement's prefiltering (which in
Nova replaces RAM/CPU/disk filters and runs in another service, over the
network) is not counted, so this figure favours Nova.

Run by `cargo bench -p roost-tests --bench agent` when ROOST_NOVA_PYTHON
names a Python with `nova` installed (scripts/bench-nova.sh makes one).
Prints one line: `nova p50_us=<n> p99_us=<n> hosts=<n>`.
"""
import random
import statistics
import sys
import time

import nova.conf
from nova import objects
from nova import servicegroup
from nova.scheduler import filters, weights
from nova.scheduler.host_manager import HostState

nova.conf.CONF([], project="nova", default_config_files=[])
objects.register_all()
# Every host's service is up; Nova would ask its service group driver.
servicegroup.API.service_is_up = lambda self, member: True

rng = random.Random(7)
hosts = []
for i in range(1000):
    h = HostState("compute-%04d" % i, "compute-%04d" % i, None)
    h.uuid = "00000000-0000-0000-0000-%012d" % i
    h.vcpus_total = 64
    h.vcpus_used = rng.randrange(0, 256) / 4
    h.total_usable_ram_mb = 262144
    h.free_ram_mb = 262144 - 4096 - rng.randrange(0, 258048)
    h.total_usable_disk_gb = 4000
    h.free_disk_mb = (4000 - rng.randrange(0, 4000)) * 1024
    h.disk_mb_used = h.total_usable_disk_gb * 1024 - h.free_disk_mb
    h.cpu_allocation_ratio = 4.0
    h.ram_allocation_ratio = 1.0
    h.disk_allocation_ratio = 1.0
    h.service = {"disabled": i % 50 == 0, "disabled_reason": None, "id": i, "host": h.host}
    h.hypervisor_type = "QEMU"
    h.hypervisor_version = 8002000
    h.cpu_info = "{}"
    h.supported_instances = [("x86_64", "kvm", "hvm")]
    h.num_instances = rng.randrange(0, 40)
    h.num_io_ops = 0
    h.stats = {}
    h.metrics = None
    h.aggregates = []
    h.instances = {}
    h.failed_builds = 0
    h.updated = None
    hosts.append(h)

flavor = objects.Flavor(vcpus=4, memory_mb=8192, root_gb=80, ephemeral_gb=0, swap=0, extra_specs={}, name="bench", flavorid="b")
spec = objects.RequestSpec(
    flavor=flavor,
    image=objects.ImageMeta.from_dict({"properties": {}}),
    num_instances=1,
    instance_group=None,
    scheduler_hints={},
    project_id="p",
    user_id="u",
    availability_zone=None,
    ignore_hosts=None,
    force_hosts=None,
    force_nodes=None,
)

fh = filters.HostFilterHandler()
enabled = nova.conf.CONF.filter_scheduler.enabled_filters
filter_objs = [cls() for cls in fh.get_matching_classes(["nova.scheduler.filters.all_filters"]) if cls.__name__ in enabled]
wh = weights.HostWeightHandler()
weigher_objs = [cls() for cls in wh.get_matching_classes(["nova.scheduler.weights.all_weighers"])]

samples = []
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 200):
    t = time.perf_counter()
    passed = fh.get_filtered_objects(filter_objs, hosts, spec, 0)
    weighed = wh.get_weighed_objects(weigher_objs, list(passed), spec)
    chosen = weighed[0]
    kept = len(weighed)
    samples.append(time.perf_counter() - t)
samples.sort()
p99 = samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))]
print("nova p50_us=%d p99_us=%d hosts=%d passed=%d filters=%d weighers=%d" % (
    statistics.median(samples) * 1e6, p99 * 1e6, len(hosts), kept, len(filter_objs), len(weigher_objs)))
