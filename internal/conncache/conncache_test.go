package conncache

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
)

func TestCache(t *testing.T) {
	var c Cache
	dials := 0
	dial := func() (*grpc.ClientConn, error) {
		dials++
		return grpc.NewClient("unix:///nonexistent", grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	a, err := c.Get("a", dial)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := c.Get("a", dial); again != a || dials != 1 {
		t.Errorf("a second Get dialled again (%d dials) or returned another connection", dials)
	}
	if b, _ := c.Get("b", dial); b == a || dials != 2 {
		t.Errorf("another key shared a connection (%d dials)", dials)
	}
	if _, err := c.Get("c", func() (*grpc.ClientConn, error) { return nil, errors.New("refused") }); err == nil {
		t.Error("a failed dial gave no error")
	}
	c.Close()
	if s := a.GetState(); s != connectivity.Shutdown {
		t.Errorf("after Close the connection is %v", s)
	}
	if fresh, _ := c.Get("a", dial); fresh == a || dials != 3 {
		t.Error("after Close the closed connection was handed out again")
	}
	c.Close()
}

// However many keys come, the cache holds Max connections: the one used
// longest ago is closed to make room, one in use stays.
func TestCacheBounded(t *testing.T) {
	c := Cache{Max: 3}
	defer c.Close()
	dial := func() (*grpc.ClientConn, error) {
		return grpc.NewClient("unix:///nonexistent", grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	conns := map[string]*grpc.ClientConn{}
	for _, k := range []string{"a", "b", "c"} {
		conns[k], _ = c.Get(k, dial)
	}
	c.Get("a", dial) // a is in use again: b is now the oldest
	c.Get("d", dial)
	if s := conns["b"].GetState(); s != connectivity.Shutdown {
		t.Errorf("the connection used longest ago is %v, want closed", s)
	}
	for _, k := range []string{"a", "c"} {
		if s := conns[k].GetState(); s == connectivity.Shutdown {
			t.Errorf("%s was closed, not the oldest", k)
		}
	}
	for i := range 100 {
		c.Get(fmt.Sprint("flood-", i), dial)
	}
	if n := len(c.conns); n != 3 {
		t.Errorf("after 100 more keys the cache holds %d connections, want 3", n)
	}
}
