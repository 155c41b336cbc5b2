# Included into a vendored ROS interface package (CMAKE_PROJECT_INCLUDE), so that it builds
# against the ROS 2 wheels from PyPI without editing its CMakeLists.txt: their exported
# `*__rosidl_generator_py` targets carry include paths of the machine that built them
# (/opt/python/cp311-cp311/...). At the end of configuration, when every imported target exists,
# the paths that do not exist here are dropped and this Python's and NumPy's are added. The same
# fix as in this package's own CMakeLists.txt; on a regular ROS install it changes nothing.
function(_ros_wheels_include_fix)
  find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
  get_property(_imported DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(_target ${_imported})
    if(_target MATCHES "__rosidl_generator_py$")
      get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
      set(_kept ${Python3_INCLUDE_DIRS} ${Python3_NumPy_INCLUDE_DIRS})
      foreach(_dir ${_dirs})
        if(_dir MATCHES "^\\$<" OR EXISTS "${_dir}")
          list(APPEND _kept "${_dir}")
        endif()
      endforeach()
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_kept}")
    endif()
  endforeach()
endfunction()

if(CMAKE_CURRENT_SOURCE_DIR STREQUAL CMAKE_SOURCE_DIR)
  cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _ros_wheels_include_fix)
endif()
