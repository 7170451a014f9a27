// Package dbrestore owns the destination side of a migration: placing pages
// (plain writes before resume, UFFDIO_COPY after), restoring storage
// references from shared disks with hash verification, resolving faults and
// prefetching until no page is missing.
//
// Storage invariants (restore.go): a page is placed from shared storage only
// if its bytes hash to the reference's hash; a reference is placed only while
// it is its page's latest entry, so a late read never overwrites newer data;
// a failed reference that is still its page's latest entry is handed back
// to the source (wire.Resend) while passes run, and after Switchover
// arrived is owed instead; every pre-switchover reference is checked before
// the switchover barrier passes, and the pages of failed ones are owed by
// the source like pending pages. After switchover a pushed reference is
// never refused (the bulk connection must keep flowing), and a fault on its
// page reads it from storage at once.
package dbrestore
