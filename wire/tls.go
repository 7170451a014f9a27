package wire

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"
)

// A DialOption changes how Dial opens a session's connections.
type DialOption func(*dialOptions)

type dialOptions struct {
	tls     *tls.Config
	timeout time.Duration
	link    time.Duration
}

// WithLinkTimeout sets how long each connection of the session may go
// without its peer acknowledging data or keepalive probes before it fails
// (TCP_USER_TIMEOUT and keepalive): a link that went down without a reset
// is then noticed, and recovered, within about d. Zero: DefaultLinkTimeout.
func WithLinkTimeout(d time.Duration) DialOption {
	return func(o *dialOptions) { o.link = d }
}

// WithTimeout bounds the whole of Dial (every connection's TCP connect, TLS
// handshake and preamble, and the wait for HelloAck): a destination that
// accepts connections but never answers makes Dial fail instead of hang.
// Zero means no bound beyond ctx.
func WithTimeout(d time.Duration) DialOption {
	return func(o *dialOptions) { o.timeout = d }
}

// WithTLS makes every connection of the session (control, bulk, urgent) run
// TLS with cfg before the preamble. A nil cfg means plain TCP. For mutual
// TLS, cfg carries the source's certificate and the CA the destination's
// certificate must chain to.
func WithTLS(cfg *tls.Config) DialOption {
	return func(o *dialOptions) { o.tls = cfg }
}

// clientTLS runs the client side of a TLS handshake on nc, bounded by ctx.
// On error nc is closed.
func clientTLS(ctx context.Context, nc net.Conn, addr string, cfg *tls.Config) (net.Conn, error) {
	if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
		// crypto/tls verifies the server against ServerName; dialling by
		// address is the common case, so name the host dialled.
		cfg = cfg.Clone()
		if host, _, err := net.SplitHostPort(addr); err == nil {
			cfg.ServerName = host
		}
	}
	tc := tls.Client(nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	return tc, nil
}

// serverTLS runs the server side of a TLS handshake on nc within timeout
// (and ctx). Nothing of the peer is read as protocol before it succeeds, so
// a peer without an acceptable certificate never reaches the preamble. On
// error nc is closed.
func serverTLS(ctx context.Context, nc net.Conn, cfg *tls.Config, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tc := tls.Server(nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", nc.RemoteAddr(), err)
	}
	return tc, nil
}

// PeerCertificateSubject names the verified certificate of the peer of c,
// or "" for a connection without TLS.
func PeerCertificateSubject(c *Conn) string {
	tc, ok := c.NetConn().(*tls.Conn)
	if !ok {
		return ""
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		return ""
	}
	return st.PeerCertificates[0].Subject.String()
}
