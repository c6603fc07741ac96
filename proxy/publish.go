package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// SRV record owners a domain publishes.
const (
	ProxyService  = "_vwire._tcp"
	BundleService = "_spiffe-bundle._tcp"
)

// Record is one SRV record a domain publishes about itself.
type Record struct {
	Service  string // ProxyService or BundleService
	Addr     string // host:port the record points at
	Priority int
	Weight   int
}

// skydnsRecord is a value of CoreDNS's etcd plugin (SkyDNS layout).
type skydnsRecord struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Priority int    `json:"priority"`
	Weight   int    `json:"weight"`
	TTL      uint32 `json:"ttl"`
}

// SkyDNSKey is where CoreDNS's etcd plugin (path /skydns) looks for
// name's records: the labels reversed, then the instance.
func SkyDNSKey(name, instance string) string {
	labels := strings.Split(strings.TrimSuffix(name, "."), ".")
	slices.Reverse(labels)
	return "/skydns/" + strings.Join(labels, "/") + "/" + instance
}

// Publisher keeps a domain's SRV records in etcd, in the SkyDNS layout that
// CoreDNS's etcd plugin serves, on one lease it keeps alive: when the
// process dies, the lease lapses and the records disappear by themselves.
type Publisher struct {
	cli  *clientv3.Client
	kvs  map[string]string
	ttl  time.Duration
	log  *slog.Logger
	stop context.CancelFunc
	done chan struct{}

	mu    sync.Mutex
	lease clientv3.LeaseID
}

// Publish writes records for domain, as this replica (instance), and keeps
// them until Close. ttl is both the records' DNS TTL and the lease's.
func Publish(ctx context.Context, cli *clientv3.Client, domain, instance string, records []Record, ttl time.Duration, log *slog.Logger) (*Publisher, error) {
	p := &Publisher{cli: cli, kvs: map[string]string{}, ttl: ttl, log: log, done: make(chan struct{})}
	for _, r := range records {
		host, port, err := net.SplitHostPort(r.Addr)
		if err != nil {
			return nil, fmt.Errorf("publishing %s: %q: %v", r.Service, r.Addr, err)
		}
		if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
			return nil, fmt.Errorf("publishing %s: %q is not an address peers can reach (give one with --advertise)", r.Service, r.Addr)
		}
		portN, _ := strconv.Atoi(port)
		val, _ := json.Marshal(skydnsRecord{Host: host, Port: portN, Priority: r.Priority, Weight: r.Weight, TTL: uint32(ttl / time.Second)})
		p.kvs[SkyDNSKey(r.Service+"."+domain, instance)] = string(val)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	keepAlive, err := p.put(ctx, runCtx)
	if err != nil {
		cancel()
		return nil, err
	}
	p.stop = cancel
	go p.run(runCtx, keepAlive)
	return p, nil
}

// put writes every record on a new lease and keeps it alive until keep
// ends.
func (p *Publisher) put(ctx, keep context.Context) (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	lease, err := p.cli.Grant(ctx, int64(p.ttl/time.Second))
	if err != nil {
		return nil, fmt.Errorf("publishing DNS records: %w", err)
	}
	var ops []clientv3.Op
	for k, v := range p.kvs {
		ops = append(ops, clientv3.OpPut(k, v, clientv3.WithLease(lease.ID)))
	}
	if _, err := p.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		return nil, fmt.Errorf("publishing DNS records: %w", err)
	}
	p.mu.Lock()
	p.lease = lease.ID
	p.mu.Unlock()
	return p.cli.KeepAlive(keep, lease.ID)
}

// run drains the keep-alive and publishes again if the lease is lost
// (etcd restarted, or a partition outlasted the TTL).
func (p *Publisher) run(ctx context.Context, keepAlive <-chan *clientv3.LeaseKeepAliveResponse) {
	defer close(p.done)
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-keepAlive:
			if ok {
				continue
			}
		}
		p.log.Warn("DNS records' lease lost; publishing again")
		for {
			var err error
			if keepAlive, err = p.put(ctx, ctx); err == nil {
				break
			}
			p.log.Warn("publishing DNS records failed; retrying", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
}

// Close withdraws the records at once.
func (p *Publisher) Close() error {
	p.stop()
	<-p.done
	p.mu.Lock()
	lease := p.lease
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := p.cli.Revoke(ctx, lease)
	return err
}
