package conncache

import (
	"errors"
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
