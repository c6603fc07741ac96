// Package conncache keeps one gRPC client connection per key, made on
// first use and shared by every request after it: the proxy's connections
// to node gateways and a gateway's to its local endpoints.
package conncache

import (
	"sync"

	"google.golang.org/grpc"
)

// DefaultMax is how many connections a Cache keeps unless Max says
// otherwise: more gateways or endpoints than most domains or nodes have,
// and a bound on what registrations can make it hold. Past it, connections
// are closed and made again as they are used (a TLS handshake each).
const DefaultMax = 4096

// Cache is a set of connections by key. The zero value is ready to use.
// When a new key would make it hold more than Max connections, the one
// used longest ago is closed first (a call still on it then fails; the
// next Get of its key dials again).
type Cache struct {
	// Max bounds the connections kept (0: DefaultMax).
	Max int

	mu    sync.Mutex
	conns map[string]*entry
	tick  uint64 // counts Gets: when each entry was used last
}

type entry struct {
	conn *grpc.ClientConn
	used uint64
}

// Get returns the connection for key, made by dial if there is none yet.
// grpc.NewClient does not connect, so dial is cheap and holding the lock
// through it keeps a key from getting two connections.
func (c *Cache) Get(key string, dial func() (*grpc.ClientConn, error)) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tick++
	if e := c.conns[key]; e != nil {
		e.used = c.tick
		return e.conn, nil
	}
	conn, err := dial()
	if err != nil {
		return nil, err
	}
	if c.conns == nil {
		c.conns = map[string]*entry{}
	}
	max := c.Max
	if max <= 0 {
		max = DefaultMax
	}
	for len(c.conns) >= max {
		oldest := ""
		for k, e := range c.conns {
			if oldest == "" || e.used < c.conns[oldest].used {
				oldest = k
			}
		}
		c.conns[oldest].conn.Close()
		delete(c.conns, oldest)
	}
	c.conns[key] = &entry{conn: conn, used: c.tick}
	return conn, nil
}

// Close closes every connection; the cache can be used again after.
func (c *Cache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for key, e := range c.conns {
		e.conn.Close()
		delete(c.conns, key)
	}
}
