// Package dbrestore owns the destination side of a migration: placing pages
// (plain writes before resume, UFFDIO_COPY after), restoring storage
// references from shared disks with hash verification, resolving faults and
// prefetching until no page is missing.
package dbrestore
