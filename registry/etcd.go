package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"

	"github.com/vwire/vwire/internal/private"
)

// etcdReadyTimeout bounds how long the embedded etcd may take to start.
const etcdReadyTimeout = 30 * time.Second

// startEmbeddedEtcd starts a one-member etcd with its data in dir, listening
// for clients on a loopback port chosen by the kernel.
func startEmbeddedEtcd(dir string) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "vwire"
	cfg.Dir = dir
	cfg.Logger = "zap"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(etcdLogger())
	loop := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	cfg.ListenClientUrls = []url.URL{loop}
	cfg.AdvertiseClientUrls = []url.URL{loop}
	cfg.ListenPeerUrls = []url.URL{loop}
	// One member never dials its peer URL; it only has to be consistent
	// across restarts.
	peer := url.URL{Scheme: "http", Host: "127.0.0.1:2380"}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	// Applying many manifests at once is one transaction.
	cfg.MaxTxnOps = 10000
	// Refreshes rewrite keys every few seconds; keep an hour of history.
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "1h"
	if err := private.MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd in %s: %w", dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: %w", dir, err)
	case <-time.After(etcdReadyTimeout):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: not ready after %v", dir, etcdReadyTimeout)
	}
}

// etcdLogger passes on etcd's errors, except those it logs about its own
// listeners closing when it stops.
func etcdLogger() *zap.Logger {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	core := zapcore.NewCore(enc, zapcore.Lock(os.Stderr), zapcore.ErrorLevel)
	return zap.New(shutdownFilter{core})
}

type shutdownFilter struct{ zapcore.Core }

func (f shutdownFilter) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if strings.HasPrefix(e.Message, "setting up serving from embedded etcd failed") {
		return ce
	}
	return f.Core.Check(e, ce)
}

func (f shutdownFilter) With(fields []zapcore.Field) zapcore.Core {
	return shutdownFilter{f.Core.With(fields)}
}

// dialEtcd connects to endpoints, with TLS when any of the files is given.
func dialEtcd(ctx context.Context, endpoints []string, caFile, certFile, keyFile string, opts []grpc.DialOption) (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		DialOptions: opts,
		Logger:      zap.NewNop(),
		Context:     ctx,
	}
	if caFile != "" || certFile != "" {
		tlsInfo := transport.TLSInfo{TrustedCAFile: caFile, CertFile: certFile, KeyFile: keyFile}
		tc, err := tlsInfo.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd TLS: %w", err)
		}
		if caFile == "" { // only a client certificate: trust the system roots
			pool, err := x509.SystemCertPool()
			if err != nil {
				return nil, err
			}
			tc.RootCAs = pool
		}
		tc.MinVersion = tls.VersionTLS12
		cfg.TLS = tc
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd %v: %w", endpoints, err)
	}
	cli.KV, cli.Lease = leaderKV{cli.KV}, leaderLease{cli.Lease}
	// clientv3.New does not wait for a server: prove one answers.
	probe, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Get(probe, "/vwire/"); err != nil {
		cli.Close()
		if errors.Is(err, context.DeadlineExceeded) {
			err = errors.New("no member answered within 10s")
		}
		return nil, fmt.Errorf("etcd %v: %w", endpoints, err)
	}
	return cli, nil
}

func etcdDir(dataDir string) string { return filepath.Join(dataDir, "etcd") }

// ErrNoQuorum: the etcd cluster cannot serve requests, because fewer than
// a quorum of its members answer.
var ErrNoQuorum = errors.New("etcd has no quorum")

// leaderKV has every request fail at once, saying why, when the etcd
// member it reaches has no leader (fewer than a quorum of the members
// answer), instead of waiting for one until the caller's deadline.
type leaderKV struct{ clientv3.KV }

func (k leaderKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	r, err := k.KV.Get(clientv3.WithRequireLeader(ctx), key, opts...)
	return r, quorum(err)
}

func (k leaderKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	r, err := k.KV.Put(clientv3.WithRequireLeader(ctx), key, val, opts...)
	return r, quorum(err)
}

func (k leaderKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	r, err := k.KV.Delete(clientv3.WithRequireLeader(ctx), key, opts...)
	return r, quorum(err)
}

func (k leaderKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	r, err := k.KV.Do(clientv3.WithRequireLeader(ctx), op)
	return r, quorum(err)
}

func (k leaderKV) Txn(ctx context.Context) clientv3.Txn {
	return leaderTxn{k.KV.Txn(clientv3.WithRequireLeader(ctx))}
}

type leaderTxn struct{ clientv3.Txn }

func (t leaderTxn) If(cs ...clientv3.Cmp) clientv3.Txn   { return leaderTxn{t.Txn.If(cs...)} }
func (t leaderTxn) Then(ops ...clientv3.Op) clientv3.Txn { return leaderTxn{t.Txn.Then(ops...)} }
func (t leaderTxn) Else(ops ...clientv3.Op) clientv3.Txn { return leaderTxn{t.Txn.Else(ops...)} }
func (t leaderTxn) Commit() (*clientv3.TxnResponse, error) {
	r, err := t.Txn.Commit()
	return r, quorum(err)
}

// leaderLease is leaderKV for leases: a registration's Grant must fail
// as fast as its writes when the member reached has no leader.
type leaderLease struct{ clientv3.Lease }

func (l leaderLease) Grant(ctx context.Context, ttl int64) (*clientv3.LeaseGrantResponse, error) {
	r, err := l.Lease.Grant(clientv3.WithRequireLeader(ctx), ttl)
	return r, quorum(err)
}

func (l leaderLease) Revoke(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseRevokeResponse, error) {
	r, err := l.Lease.Revoke(clientv3.WithRequireLeader(ctx), id)
	return r, quorum(err)
}

func (l leaderLease) KeepAliveOnce(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseKeepAliveResponse, error) {
	r, err := l.Lease.KeepAliveOnce(clientv3.WithRequireLeader(ctx), id)
	return r, quorum(err)
}

func quorum(err error) error {
	if err != nil && errors.Is(err, rpctypes.ErrNoLeader) {
		return fmt.Errorf("%w: the etcd member reached has no leader, so fewer than a quorum of the cluster's members answer; bring members back (%v)", ErrNoQuorum, err)
	}
	return err
}
