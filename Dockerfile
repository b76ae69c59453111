# harikube container image: the static harikube binary under /kubernetes,
# answering as kube-apiserver, kube-controller-manager and kine through
# relative symlinks, on busybox (vCluster's init container runs
# `cp -r /kubernetes/. /binaries/`, so the image needs a `cp`).
#
#   docker build -t ghcr.io/harikube/harikube:v1.37.2 .
#
# scripts/build-image builds the same layout without a container daemon.

ARG GO_VERSION=1.26
ARG BUSYBOX_VERSION=1.37

FROM golang:${GO_VERSION} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# The Makefile sets the version ldflags that /version reports (vCluster reads it).
RUN make build BIN=/out/harikube VERSION=${VERSION} \
 && /out/harikube version

FROM busybox:${BUSYBOX_VERSION}
COPY --from=build /out/harikube /kubernetes/harikube
# Relative links survive the copy into another directory.
RUN ln -s harikube /kubernetes/kube-apiserver \
 && ln -s harikube /kubernetes/kube-controller-manager \
 && ln -s harikube /kubernetes/kine \
 && /kubernetes/kube-apiserver --version
ENV PATH=/kubernetes:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL org.opencontainers.image.title="harikube" \
      org.opencontainers.image.source="https://github.com/harikube/harikube" \
      org.opencontainers.image.description="kube-apiserver, kube-controller-manager and Kine with selector pushdown in one static binary; vCluster k8s distro image"
ENTRYPOINT ["/kubernetes/harikube"]
CMD ["server"]
