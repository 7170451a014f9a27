// Package tests holds dmig's end-to-end tests: whole migrations of test
// guests and of QEMU VMs, checked page for page.
package tests
