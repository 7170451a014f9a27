// Package vmm holds the hypervisor drivers dmig migrates guests of: a plain
// process whose RAM is a shared file (the test guest), and QEMU over QMP.
package vmm
