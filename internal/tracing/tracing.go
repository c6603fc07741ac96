// Package tracing exports a role's OpenTelemetry traces over OTLP
// (--otlp-endpoint) and carries the W3C trace context across every gRPC
// hop, so that one request is one trace from the client through both
// domains' gateways and proxies to the endpoint. Code that wants a span of
// its own takes the tracer from the span its context carries (Start): with
// tracing off that span, and every one below it, records nothing.
package tracing

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
)

// Tracing is a process's tracer provider; a nil *Tracing is off and adds no
// option.
type Tracing struct {
	tp *sdktrace.TracerProvider
}

// propagator is the W3C trace context: traceparent and tracestate.
var propagator = propagation.TraceContext{}

// CheckEndpoint says what is wrong with the OTLP endpoint that flag
// gives: host:port (plain gRPC, as to a collector beside the process), or
// an http:// or https:// URL.
func CheckEndpoint(flag, endpoint string) error {
	if u, err := url.Parse(endpoint); err == nil && (u.Scheme == "http" || u.Scheme == "https") {
		if u.Host == "" {
			return fmt.Errorf("%s %q: no host", flag, endpoint)
		}
		return nil
	}
	if _, _, err := net.SplitHostPort(endpoint); err != nil {
		return fmt.Errorf("%s %q: want host:port, or an http:// or https:// URL (%v)", flag, endpoint, err)
	}
	return nil
}

// Start exports the spans of the process, named service (vwire-domain,
// vwire-gateway, ...) with attrs, to the OTLP/gRPC collector at endpoint
// (see CheckEndpoint); "" is off (nil).
func Start(endpoint, service string, attrs ...attribute.KeyValue) (*Tracing, error) {
	if endpoint == "" {
		return nil, nil
	}
	if err := CheckEndpoint("--otlp-endpoint", endpoint); err != nil {
		return nil, err
	}
	if !strings.HasPrefix(endpoint, "http://") && !strings.HasPrefix(endpoint, "https://") {
		endpoint = "http://" + endpoint // plain gRPC
	}
	// New does not connect: a collector that is not up yet loses the first
	// batches, never the process.
	exp, err := otlptracegrpc.New(context.Background(), otlptracegrpc.WithEndpointURL(endpoint), otlptracegrpc.WithTimeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("--otlp-endpoint %s: %w", endpoint, err)
	}
	res := resource.NewSchemaless(append([]attribute.KeyValue{semconv.ServiceName(service)}, attrs...)...)
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(time.Second)), sdktrace.WithResource(res))
	return &Tracing{tp: tp}, nil
}

// Close sends the spans not sent yet (for up to 5 s) and stops.
func (t *Tracing) Close() error {
	if t == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return t.tp.Shutdown(ctx)
}

// ServerOptions trace a gRPC server's calls, continuing the caller's trace;
// hop names the server in its spans (vwire.hop: gateway, proxy, endpoint).
func (t *Tracing) ServerOptions(hop string) []grpc.ServerOption {
	if t == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(t.options(hop)...))}
}

// DialOptions trace a gRPC client's calls and send the trace context with
// them.
func (t *Tracing) DialOptions(hop string) []grpc.DialOption {
	if t == nil {
		return nil
	}
	return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(t.options(hop)...))}
}

func (t *Tracing) options(hop string) []otelgrpc.Option {
	return []otelgrpc.Option{otelgrpc.WithTracerProvider(t.tp), otelgrpc.WithPropagators(propagator),
		otelgrpc.WithSpanAttributes(attribute.String("vwire.hop", hop))}
}

// Span starts a span named name below the one ctx carries, with that
// span's tracer: nothing is recorded when ctx carries none or tracing is
// off. End it.
func Span(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	tracer := trace.SpanFromContext(ctx).TracerProvider().Tracer("github.com/vwire/vwire")
	return tracer.Start(ctx, name, trace.WithAttributes(attrs...))
}

// Fail marks span as failed with err (nil: nothing).
func Fail(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
}

// LogHandler adds the trace and span ids of the context a record is
// logged with (InfoContext and its kin) to the record.
func LogHandler(h slog.Handler) slog.Handler { return logHandler{h} }

type logHandler struct{ slog.Handler }

func (h logHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return logHandler{h.Handler.WithAttrs(attrs)}
}

func (h logHandler) WithGroup(name string) slog.Handler { return logHandler{h.Handler.WithGroup(name)} }
