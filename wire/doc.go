// Package wire owns the migration protocol between a dmig source and a dmig
// destination: connection set-up, framing, message types and versioning. It
// imports nothing of the project and holds no migration policy: callers
// decide what to send when; wire makes sure what arrives is well formed.
//
// # Connections
//
// A session is one migration: a 16-byte SessionID, one control connection,
// Hello.BulkConns bulk connections and one urgent connection, all TCP, all
// dialled by the source. Every connection opens with a preamble in both
// directions (magic "DMIG", version, role, index, session id) before any
// frame, so a stray or foreign peer is turned away before it can send a
// frame. The urgent connection carries only post-copy requests and replies,
// so a page a guest is blocked on never waits behind bulk data.
//
// Source (Command: the destination guest's argv, for process guests):
//
//	s, err := wire.Dial(ctx, addr, wire.Hello{Mode: "hybrid", Guest: name,
//		Blocks: blocks, BulkConns: 2, Flags: wire.FlagPostcopy, Command: argv})
//	// *wire.RefusedError (errors.Is ErrRefused) if the destination said no.
//
// Destination:
//
//	l, err := wire.Listen(ctx, addr)
//	l.Rejected = func(a net.Addr, err error) { log.Warn("turned away", "from", a, "err", err) }
//	s, err := l.Accept(ctx, func(h *wire.Hello) wire.HelloAck {
//		if !sameGeometry(h.Blocks) { return wire.HelloAck{Code: wire.RefuseGeometry, Message: "..."} }
//		return wire.HelloAck{Accepted: true}
//	})
//
// # Security
//
// With WithTLS (dialer) and Listener.TLS (acceptor) every connection runs
// TLS before its preamble; with ClientAuth RequireAndVerifyClientCert that
// is mutual TLS, and a peer without a certificate the acceptor's CA signed,
// a plain-TCP peer, garbage or a replayed recording fails the handshake:
// none of its bytes are read as protocol and no Hello reaches decide. The
// destination runs Hello.Command, so an open listener is remote execution:
// use TLS anywhere but a test bench. TLS connections are read without the
// readv fast path.
//
// # Session flow (what the engine sends; wire does not enforce the order)
//
//  1. Hello (source → destination), HelloAck.
//  2. Iteration k = 1, 2, …: PageBatch{Iteration: k} frames on the bulk
//     connections, page p of block b always on Bulk[BulkConn(b, p, n)] so
//     that a page's versions arrive in the order they were sent; then
//     IterationEnd{k, Batches} on control, Batches[i] being the number of
//     iteration-k batches sent on bulk connection i. Bulk connections are
//     independent streams: the destination knows iteration k has fully
//     arrived when it has counted those batches. Progress flows back (the
//     batches applied so far: the source lets them catch up before it
//     pauses the guest), and Resend: pages whose storage references
//     failed at the destination, which the source sends again as data in
//     a later pass; Verdict counts the references checked so far and how
//     many failed.
//  3. The source pauses the guest, sends the last iteration and its
//     IterationEnd, then Switchover{final iteration, Pending, DeviceState}:
//     Pending are the pages the destination must treat as not yet
//     received; with DeviceState, the VMM's device state follows in
//     DeviceState frames, ended by Last. The destination waits for every
//     counted batch and marks Pending missing, then loads the device state
//     as it arrives (its VMM may read guest RAM meanwhile: the page faults
//     are served), and sends Ready; the source answers Go; the destination
//     resumes the guest and sends Resumed. The two steps make "the destination has not
//     resumed" certain for the source until it sends Go: a failure before
//     Go aborts cleanly, one after Go leaves the source unable to tell.
//  4. Post-copy: the destination sends PageRequest on urgent, the source
//     answers each page with a PageReply, in order. The source may push the
//     rest as PageBatch{Iteration: IterationPostcopy} on the bulk
//     connections; the destination drops pushed pages it already has.
//  5. The destination sends Complete (its figures as JSON) when no page is
//     missing; the source answers with Complete (its figures) and both close.
//
// Abort (either side, before Go) cancels: the source guest keeps
// running. Error reports a failure that ends the session. After Resumed the
// source must keep serving requests until Complete, whatever else happens.
//
// # Framing and limits
//
// A frame is an 8-byte header (type, flags, reserved, payload length, all
// little-endian; flags and reserved zero) and a payload. Each type has a
// length limit (control 64 MiB, batch ~4 MiB, urgent 64 KiB) checked before
// anything is allocated for the payload, which is then read in chunks as it
// arrives. A frame type is valid on one connection role only. Every decoder
// rejects truncated input, unknown kinds, counts that disagree with the
// length, trailing bytes, non-minimal varints and out-of-range values, and
// encodings are canonical (decode then encode gives the same bytes). After
// Dial/Accept each Conn also rejects pages outside the Hello's RAM blocks.
//
// # Versioning
//
// Version is compared exactly, in the preamble of every connection and in
// Hello: any change to an encoding or a meaning bumps it, and peers of
// different versions refuse each other with ErrVersion naming both. There
// is no negotiation and no optional field; unknown flags are errors.
//
// # Page data without copies
//
// A PageBatch keeps its entry table (page numbers delta-coded, kind, storage
// reference) apart from its page data. WriteFrame sends header, table and
// the caller's page slices with one writev (AddData merges pages adjacent
// in memory into one slice). ReadFrame returns the decoded entries and
// leaves the data on the socket: ReadData reads a run of consecutive pages
// (PageBatch.DataRun) straight into its destination, ReadDataVec reads all
// of a batch's runs with one readv. BatchTarget (1 MiB) is the size to aim
// a batch at; Full says when it is reached.
//
// # Invariants
//
//   - One goroutine reads a Conn; any number may write (writes are serialized).
//   - ReadFrame's *PageBatch, *PageReply and PageReply.Data are reused by the
//     next ReadFrame; page data passed to WriteFrame must not change until it
//     returns.
//   - Blocking calls take a context: cancelling it unblocks them (it becomes a
//     past socket deadline). ReadData/ReadDataVec run under the context of the
//     ReadFrame that returned the batch.
//   - Once a frame is partly read or written, a Conn's error is sticky (the
//     stream position is lost); a read cancelled before a frame began is not.
//   - A Conn owns its net.Conn; Session.Close closes them all.
//   - Conn.BytesWritten/BytesRead count frame bytes on the socket (preambles
//     excluded) and may be read from any goroutine.
package wire
