package main

import (
	"os"
	"runtime"
)

// engineProcs is the fewest Go processors (GOMAXPROCS) a migration's ends
// run with.
const engineProcs = 6

// moreProcs gives an engine command (migrate, serve, drain, resume,
// compare) more Go processors than the host has cores, unless the operator
// set GOMAXPROCS. A post-copy fault waits for two goroutines woken by the
// network, the source's page server and the destination's reply reader.
// The runtime looks at the network only when a processor runs out of work,
// or every 10 ms from its monitor; with every processor busy with bulk
// traffic (the push: a sender per bulk connection, a receiver placing
// pages) a ready urgent reader waited up to those 10 ms: fault p99 of
// 2.6–3.5 ms on loopback. With processors to spare, an idle one waits in
// epoll and the kernel wakes it when the request or reply arrives, and the
// kernel's scheduler, which preempts at wake-up, shares the cores.
func moreProcs() {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	if runtime.GOMAXPROCS(0) < engineProcs {
		runtime.GOMAXPROCS(engineProcs)
	}
}
