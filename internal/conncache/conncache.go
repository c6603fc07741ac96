// Package conncache keeps one gRPC client connection per key, made on
// first use and shared by every request after it: the proxy's connections
// to node gateways and a gateway's to its local endpoints.
package conncache

import (
	"sync"

	"google.golang.org/grpc"
)

// Cache is a set of connections by key. The zero value is ready to use.
type Cache struct {
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// Get returns the connection for key, made by dial if there is none yet.
// grpc.NewClient does not connect, so dial is cheap and holding the lock
// through it keeps a key from getting two connections.
func (c *Cache) Get(key string, dial func() (*grpc.ClientConn, error)) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if conn := c.conns[key]; conn != nil {
		return conn, nil
	}
	conn, err := dial()
	if err != nil {
		return nil, err
	}
	if c.conns == nil {
		c.conns = map[string]*grpc.ClientConn{}
	}
	c.conns[key] = conn
	return conn, nil
}

// Close closes every connection; the cache can be used again after.
func (c *Cache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for key, conn := range c.conns {
		conn.Close()
		delete(c.conns, key)
	}
}
