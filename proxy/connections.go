package proxy

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/vwire/vwire/proxy/proxypb"
)

// Connections keeps a domain's connections in etcd, under
// /vwire/<domain>/connections/<id>, on leases that lapse with the
// connections unless they are refreshed: a restarted proxy finds them all.
// Connections stored in the same second share a lease (one etcd write per
// connection instead of two); a connection then lapses up to a second late.
type Connections struct {
	cli    *clientv3.Client
	prefix string

	mu     sync.Mutex
	window int64 // the second the current lease was granted for
	ttl    int64
	lease  clientv3.LeaseID
}

// NewConnections returns the connection store of domain.
func NewConnections(cli *clientv3.Client, domain string) *Connections {
	return &Connections{cli: cli, prefix: "/vwire/" + domain + "/connections/"}
}

// Put stores conn for (at least) ttlSeconds. Refreshing a connection moves
// it to a newer lease; the old one lapses with the others on it.
func (c *Connections) Put(ctx context.Context, conn *proxypb.Connection, ttlSeconds int64) error {
	lease, err := c.leaseFor(ctx, ttlSeconds)
	if err != nil {
		return err
	}
	b, err := proto.Marshal(conn)
	if err != nil {
		return err
	}
	_, err = c.cli.Put(ctx, c.prefix+conn.GetId(), string(b), clientv3.WithLease(lease))
	return err
}

// leaseFor is this second's shared lease of ttlSeconds (plus the second).
func (c *Connections) leaseFor(ctx context.Context, ttlSeconds int64) (clientv3.LeaseID, error) {
	now := time.Now().Unix()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.window == now && c.ttl == ttlSeconds {
		return c.lease, nil
	}
	g, err := c.cli.Grant(ctx, ttlSeconds+1)
	if err != nil {
		return 0, err
	}
	c.window, c.ttl, c.lease = now, ttlSeconds, g.ID
	return g.ID, nil
}

// Get returns the connection with id, or nil.
func (c *Connections) Get(ctx context.Context, id string) (*proxypb.Connection, error) {
	resp, err := c.cli.Get(ctx, c.prefix+id)
	if err != nil || len(resp.Kvs) == 0 {
		return nil, err
	}
	conn := &proxypb.Connection{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, conn); err != nil {
		return nil, fmt.Errorf("corrupt connection %s in etcd: %w", id, err)
	}
	return conn, nil
}

// Delete removes the connection with id; it reports whether it was there.
func (c *Connections) Delete(ctx context.Context, id string) (bool, error) {
	resp, err := c.cli.Delete(ctx, c.prefix+id)
	if err != nil {
		return false, err
	}
	return resp.Deleted > 0, nil
}

// List returns every connection.
func (c *Connections) List(ctx context.Context) ([]*proxypb.Connection, int64, error) {
	resp, err := c.cli.Get(ctx, c.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, err
	}
	var out []*proxypb.Connection
	for _, kv := range resp.Kvs {
		conn := &proxypb.Connection{}
		if err := proto.Unmarshal(kv.Value, conn); err != nil {
			return nil, 0, fmt.Errorf("corrupt connection %s in etcd: %w", kv.Key, err)
		}
		out = append(out, conn)
	}
	return out, resp.Header.Revision, nil
}

// Watch calls fn for every change after revision rev until ctx ends: the
// connection, and whether it was deleted (closed or expired; then only its
// id is known).
func (c *Connections) Watch(ctx context.Context, rev int64, fn func(conn *proxypb.Connection, deleted bool)) error {
	for wr := range c.cli.Watch(clientv3.WithRequireLeader(ctx), c.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				fn(&proxypb.Connection{Id: string(ev.Kv.Key[len(c.prefix):]), State: proxypb.State_DELETED}, true)
				continue
			}
			conn := &proxypb.Connection{}
			if err := proto.Unmarshal(ev.Kv.Value, conn); err != nil {
				return err
			}
			fn(conn, false)
		}
	}
	return ctx.Err()
}
