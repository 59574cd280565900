# Debian packages from the install rules (CPack DEB; scripts/package.sh runs it):
#   iceblk_<version>_amd64.deb        the daemon component: iceblkd, iceblk, man pages,
#                                     systemd units, docs
#   libiceblk-dev_<version>_amd64.deb the dev component: libiceblk_driver.a, headers,
#                                     CMake package config, iceblk.pc
# Depends: computed by dpkg-shlibdeps from the binaries (OpenSSL, liburing,
# libsystemd, fmt, spdlog, libstdc++, ...); the -dev package depends on the -dev
# packages its headers and archive need.

# Package docs: copyright, changelog (Debian format, as lintian wants), the daemon
# manual, an example instance config.
set(_pkg_dir ${CMAKE_BINARY_DIR}/package)
set(ICEBLK_MAINTAINER "iceblk developers <iceblk-devel@example.org>" CACHE STRING "Maintainer: of the Debian packages")
set(ICEBLK_CHANGELOG_DATE "Tue, 01 Dec 2026 00:00:00 +0000")
configure_file(${PROJECT_SOURCE_DIR}/packaging/debian/changelog.in ${_pkg_dir}/changelog @ONLY)
add_custom_command(OUTPUT ${_pkg_dir}/changelog.gz
  COMMAND sh -c "gzip -9n < '${_pkg_dir}/changelog' > '${_pkg_dir}/changelog.gz'"
  DEPENDS ${_pkg_dir}/changelog VERBATIM)
add_custom_target(iceblk_pkg_docs ALL DEPENDS ${_pkg_dir}/changelog.gz)
foreach(comp daemon dev)
  if(comp STREQUAL "daemon")
    set(_docdir ${CMAKE_INSTALL_DATAROOTDIR}/doc/iceblk)
  else()
    set(_docdir ${CMAKE_INSTALL_DATAROOTDIR}/doc/libiceblk-dev)
  endif()
  install(FILES ${PROJECT_SOURCE_DIR}/packaging/debian/copyright ${_pkg_dir}/changelog.gz
          DESTINATION ${_docdir} COMPONENT ${comp})
endforeach()
install(FILES ${PROJECT_SOURCE_DIR}/docs/iceblkd.md ${PROJECT_SOURCE_DIR}/packaging/vm0.json
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/iceblk COMPONENT daemon)

# systemd units: ExecStart= names the installed iceblkd, so they are written at
# install time for the prefix actually used (/usr in the package).
set(ICEBLK_SYSTEMD_UNITDIR "lib/systemd/system" CACHE STRING "systemd unit directory, relative to the prefix")
install(CODE "
  set(_prefix \"\${CMAKE_INSTALL_PREFIX}\")
  set(ICEBLKD \"\${_prefix}/${CMAKE_INSTALL_SBINDIR}/iceblkd\")
  # One staging file per destination: concurrent installs (the tests) do not race.
  string(MD5 _key \"\$ENV{DESTDIR}\${_prefix}\")
  set(_unit ${_pkg_dir}/units/\${_key}/iceblkd@.service)
  configure_file(${PROJECT_SOURCE_DIR}/packaging/systemd/iceblkd@.service.in \${_unit} @ONLY)
  file(INSTALL \${_unit} ${PROJECT_SOURCE_DIR}/packaging/systemd/iceblkd@.socket
       DESTINATION \"\${_prefix}/${ICEBLK_SYSTEMD_UNITDIR}\" FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
" COMPONENT daemon)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME iceblk)
set(CPACK_PACKAGE_VENDOR "the iceblk authors")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_INSTALL_PREFIX /usr)
set(CPACK_SET_DESTDIR ON)  # install(CODE) above sees CMAKE_INSTALL_PREFIX=/usr
set(CPACK_STRIP_FILES ON)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL daemon dev)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # <name>_<version>_<arch>.deb
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${ICEBLK_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_DEBIAN_DAEMON_PACKAGE_NAME iceblk)
set(CPACK_DEBIAN_DAEMON_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_DAEMON_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_DAEMON_PACKAGE_CONTROL_EXTRA
    ${PROJECT_SOURCE_DIR}/packaging/debian/postinst ${PROJECT_SOURCE_DIR}/packaging/debian/postrm)
# Descriptions: the first line is the synopsis, then the extended description.
set(CPACK_DEBIAN_DAEMON_DESCRIPTION
    "vhost-user-blk device daemon with an Inline Crypto Engine
iceblkd serves disk images to virtual machines as virtio-blk devices over
vhost-user, and encrypts and decrypts each request inline with keys held in
numbered keyslots (VIRTIO_BLK_F_ICE), the way UFS/eMMC inline encryption
works. The package has iceblkd, the iceblk command line (a userspace driver:
info, read, write, verify, bench, conformance), and systemd units with
socket activation: iceblkd@.socket and iceblkd@.service.")
set(CPACK_DEBIAN_DEV_PACKAGE_NAME libiceblk-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS "libssl-dev, libfmt-dev, libspdlog-dev, libexpected-dev")
set(CPACK_DEBIAN_DEV_DESCRIPTION
    "iceblk driver library (static) and headers
A userspace virtio-blk driver for vhost-user-blk devices, with the Inline
Crypto Engine extension (VIRTIO_BLK_F_ICE): libiceblk_driver.a, the headers
under include/iceblk/, a CMake package config (find_package(iceblk) gives
iceblk::driver) and a pkg-config file (iceblk).")
include(CPack)
