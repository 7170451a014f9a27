// Package compare runs comparison migrations: one QEMU VM migrated on this
// host in each of dmig's modes (hybrid, precopy, postcopy) and QEMU's own
// (qemu-precopy, qemu-postcopy), under one workload, with each migration's
// report, the workload's throughput before, during and after it, and a
// check of the guest's data after it. It owns the run's order and timing:
// each migration starts after Warmup of workload, is followed by Cooldown,
// and hops the VM to a new QEMU (the old one quits, its RAM file is
// removed if the comparison made it). Rendering (table, CSV, plot) is in
// render.go and plot.go.
package compare
