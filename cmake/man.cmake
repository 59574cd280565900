# Man pages iceblkd(8) and iceblk(1), generated at build time from the programs'
# --help and --version (scripts/gen-man.sh, help2man) plus docs/man/*.h2m, so that
# they cannot drift from the options. Installed with the daemon component.
find_program(HELP2MAN help2man)
if(NOT HELP2MAN)
  message(WARNING "help2man not found (scripts/install-deps.sh installs it): no man pages")
  return()
endif()
set(_man_dir ${CMAKE_BINARY_DIR}/man)
set(_gen ${PROJECT_SOURCE_DIR}/scripts/gen-man.sh)
add_custom_command(OUTPUT ${_man_dir}/iceblkd.8.gz
  COMMAND ${CMAKE_COMMAND} -E make_directory ${_man_dir}
  COMMAND ${_gen} $<TARGET_FILE:iceblkd> 8 "vhost-user-blk device daemon with an Inline Crypto Engine"
          ${PROJECT_SOURCE_DIR}/docs/man/iceblkd.h2m ${_man_dir}/iceblkd.8.gz
  DEPENDS iceblkd ${_gen} ${PROJECT_SOURCE_DIR}/docs/man/iceblkd.h2m
  COMMENT "iceblk: man page iceblkd(8)"
  VERBATIM)
add_custom_command(OUTPUT ${_man_dir}/iceblk.1.gz
  COMMAND ${CMAKE_COMMAND} -E make_directory ${_man_dir}
  COMMAND ${_gen} $<TARGET_FILE:iceblk> 1 "userspace virtio-blk driver with inline encryption, for vhost-user-blk devices"
          ${PROJECT_SOURCE_DIR}/docs/man/iceblk.h2m ${_man_dir}/iceblk.1.gz
          info read write verify bench conformance
  DEPENDS iceblk ${_gen} ${PROJECT_SOURCE_DIR}/docs/man/iceblk.h2m
  COMMENT "iceblk: man page iceblk(1)"
  VERBATIM)
add_custom_target(iceblk_man ALL DEPENDS ${_man_dir}/iceblkd.8.gz ${_man_dir}/iceblk.1.gz)
install(FILES ${_man_dir}/iceblkd.8.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man8 COMPONENT daemon)
install(FILES ${_man_dir}/iceblk.1.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man1 COMPONENT daemon)
