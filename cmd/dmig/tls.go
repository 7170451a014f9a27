package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// tlsFlags are the mutual-TLS flags of serve and migrate.
type tlsFlags struct {
	TLSCert string `name:"tls-cert" type:"path" help:"This host's certificate (PEM), signed by the --tls-ca CA." group:"Security"`
	TLSKey  string `name:"tls-key" type:"path" help:"Private key of --tls-cert (PEM)." group:"Security"`
	TLSCA   string `name:"tls-ca" type:"path" help:"CA certificate(s) (PEM) the peer's certificate must chain to." group:"Security"`
}

// errNoTLS: none of the TLS flags was given.
var errNoTLS = errors.New("no TLS flags")

// load reads the certificate, key and CA pool; errNoTLS if no flag is set.
func (f tlsFlags) load() (tls.Certificate, *x509.CertPool, error) {
	if f.TLSCert == "" && f.TLSKey == "" && f.TLSCA == "" {
		return tls.Certificate{}, nil, errNoTLS
	}
	if f.TLSCert == "" || f.TLSKey == "" || f.TLSCA == "" {
		return tls.Certificate{}, nil, errors.New("mutual TLS needs all of --tls-cert, --tls-key and --tls-ca")
	}
	cert, err := tls.LoadX509KeyPair(f.TLSCert, f.TLSKey)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("load certificate %s: %w", f.TLSCert, err)
	}
	pem, err := os.ReadFile(f.TLSCA)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("read CA %s: %w", f.TLSCA, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return tls.Certificate{}, nil, fmt.Errorf("read CA %s: no PEM certificate in it", f.TLSCA)
	}
	return cert, pool, nil
}

// server is the destination's config: client certificates are required
// and must chain to the CA.
func (f tlsFlags) server() (*tls.Config, error) {
	cert, pool, err := f.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// client is the source's config: the destination's certificate must chain
// to the CA and name the host dialled (or serverName, if set).
func (f tlsFlags) client(serverName string) (*tls.Config, error) {
	cert, pool, err := f.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   serverName,
		MinVersion:   tls.VersionTLS13,
	}, nil
}
